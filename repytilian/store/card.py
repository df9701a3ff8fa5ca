"""What a model folder tells a person: the loss plot (loss.png) and the model card (README.md).

Both are made from the folder's own files (config.json, metrics.jsonl), so `repytilian plot DIR`
can redraw them at any time. matplotlib is optional (`pip install 'repytilian[plot]'`): without
it the plot is skipped with a one-line note.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import RepytilianError


def read_metrics(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a damaged line should not cost the whole plot
    return rows


def plot_loss(metrics: list[dict[str, Any]], out: Path, title: str = "") -> Path | None:
    """Train and val loss against steps (tokens on the top axis), LR on a second axis; None without matplotlib."""
    try:
        # A Figure of its own, not pyplot's: drawing a file never switches the backend of the
        # program around it (a notebook's inline plots went on as files once this ran)
        import matplotlib.ticker
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not metrics:
        raise RepytilianError("no evaluations to plot yet (metrics.jsonl is empty or missing)")
    steps = [m["step"] for m in metrics]
    fig = Figure(figsize=(8, 4.8), dpi=120)
    ax = fig.subplots()
    ax.plot(steps, [m["train_loss"] for m in metrics], marker="o", markersize=3, label="train loss")
    ax.plot(steps, [m["val_loss"] for m in metrics], marker="o", markersize=3, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [m.get("lr", 0.0) for m in metrics], color="grey", linestyle="--", linewidth=1,
               label="learning rate")
    lr_ax.set_ylabel("learning rate")
    # Each tick in full ("2.00e-03"): an axis offset label would collide with the top axis.
    lr_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2e}"))
    tokens_per_step = metrics[-1]["tokens"] / max(metrics[-1]["step"], 1)
    top = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step / 1e6,
                                               lambda t: t * 1e6 / tokens_per_step))
    top.set_xlabel("tokens seen (millions)")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    if title:
        ax.set_title(title, fontsize=10, pad=28)
    fig.tight_layout()
    fig.savefig(out)
    return out


def _count(model: dict, key: str, noun: str) -> str:
    return f"{model.get(key)} {noun}{'s' * (model.get(key) != 1)}"  # 1 layer, 4 layers


def model_card(meta: dict[str, Any], sample: str | None = None) -> str:
    """A README.md for the model folder, from its config.json contents."""
    model, train, data = meta.get("model", {}), meta.get("train", {}), meta.get("data", {})
    summary = meta.get("summary", {})
    source = data.get("source", {})
    what = {"dataset": "the {} data set", "file": "the file {}", "dir": "the text files under {}"}.get(
        source.get("kind"), "{}").format(source.get("value", "?"))

    base = (meta.get("fine_tuned") or {}).get("from")  # the model folder a fine-tune started from

    def fmt(value: Any, spec: str = "") -> str:
        return "?" if value is None else format(value, spec)

    lines = [
        "# Repytilian model",
        "",
        f"A GPT with {_count(model, 'n_layer', 'layer')}, {_count(model, 'n_head', 'head')}, {model.get('n_embd')} wide, "
        f"a context of {model.get('block_size')} tokens, {fmt(summary.get('parameters'), ',')} parameters, "
        f"trained with Repytilian ({meta.get('created_by', '?')}).",
        "",
        "| | |",
        "|---|---|",
        *([f"| fine-tuned from | {base} |"] if base else []),
        f"| data | {what}: {fmt(data.get('chars'), ',')} characters, sha256 `{str(data.get('sha256', '?'))[:16]}…` |",
        f"| tokenizer | {meta.get('tokenizer')} ({fmt(model.get('vocab_size'), ',')} tokens); "
        f"{fmt(data.get('train_tokens'), ',')} train / {fmt(data.get('val_tokens'), ',')} val tokens |",
        f"| training | {fmt(summary.get('step'), ',')} steps, {fmt(summary.get('tokens_seen'), ',')} tokens seen, "
        f"{fmt(summary.get('train_seconds'))} s on {summary.get('device', '?')} ({train.get('dtype', '?')}) |",
        f"| settings | batch {train.get('batch_size')}, learning rate {fmt(train.get('learning_rate'), 'g')} → "
        f"{fmt(train.get('min_lr'), 'g')}, "
        f"warm-up {train.get('warmup_iters')}, weight decay {train.get('weight_decay')}, dropout {model.get('dropout')} |",
    ]
    last = summary.get("last_eval") or {}
    if summary.get("val_loss_full") is not None:
        scope = summary.get("val_loss_full_scope", "the whole validation split")
        bpb = f" ({summary['val_bits_per_byte']:.4f} bits per byte)" if summary.get("val_bits_per_byte") else ""
        lines.append(f"| final loss | val {summary['val_loss_full']:.4f}{bpb} over {scope}; "
                     f"last estimate train {fmt(last.get('train_loss'))}, val {fmt(last.get('val_loss'))} |")
    elif last:
        lines.append(f"| last evaluation | step {last.get('step')}: train {last.get('train_loss')}, "
                     f"val {last.get('val_loss')} (training was not finished) |")
    best = summary.get("best") or {}
    if best.get("step") is not None and best.get("kept"):
        full = f", whole split {best['val_loss_full']:.4f}" if best.get("val_loss_full") is not None else ""
        last = (f" (the last model: {best['last_val_loss_full']:.4f})" if best.get("last_val_loss_full") is not None
                else "")
        lines.append(f"| best | step {best['step']}: val estimate {fmt(best.get('val_loss'), '.4f')}{full}{last}; "
                     f"kept in {best['kept']} |")
    weights = meta.get("weights")
    if weights:
        lines.append(f"| weights | stored in {weights['dtype']}: whole-split val loss {weights['val_loss_float32']:.4f} "
                     f"in float32, {weights['val_loss_stored']:.4f} as stored |")
    lines += ["", "![loss](loss.png)", "",
              "Generate: `python3 generate.py -m <this folder>`; continue training: "
              "`python3 training.py -l <this folder>`."]  # the card is for people, who use the commands
    if meta.get("retrain"):
        lines += ["", f"Trained from scratch again, and this card rewritten, by `{meta['retrain']}`."]
    if sample:
        lines += ["", "## A sample", "", "```", sample.strip("\n")[:2000], "```"]
    return "\n".join(lines) + "\n"


def card_of(folder: str | Path) -> str:
    """The model card of a model folder: its README.md, or one made from its config.json."""
    from .folder import read_config

    folder = Path(folder)
    meta = read_config(folder)  # a clear error for anything that is not a model folder
    card = folder / "README.md"
    return card.read_text(encoding="utf-8") if card.is_file() else model_card(meta)


def plot_folder(folder: str | Path) -> Path | None:
    """Draw loss.png (train/val loss and learning rate) in a model folder; None without matplotlib."""
    from .folder import read_config

    folder = Path(folder)
    read_config(folder)  # a clear error if it is not a model folder
    return plot_loss(read_metrics(folder), folder / "loss.png", title=str(folder))
