"""`repytilian ladder`: the lecture's steps from a bigram table to the GPT, each trained for the
same short time on the same text, in one table (and a plot) to compare them.

    repytilian ladder                        # Tiny Shakespeare, 60 s a step
    repytilian ladder --budget 30 -d my.txt  # your own text, 30 s a step

Each step is an `--arch` (config.py's LECTURE_STEPS, then classic): what it adds is in the table.
The models are saved under --out (one folder per step), so each can be sampled afterwards.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import LECTURE_STEP_ABOUT
from ..data import DataSource
from ..data.corpus import DataTooShort
from ..errors import RepytilianError, SettingError
from .common import seconds

STEPS = tuple(LECTURE_STEP_ABOUT)  # bigram ... classic, in the lecture's order
LAST_STEP_DROPOUT = 0.1  # the GPT's dropout; the lecture's 0.2 is for a model 3x wider trained far longer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=seconds, default=60.0, metavar="SECONDS",
                        help="training time for each step (default 60; or 90s, 2m)")
    parser.add_argument("-d", "--datafile", "--data", dest="datafile", help="a text file (default Tiny Shakespeare)")
    parser.add_argument("-p", "--datapath", help="a folder of text files")
    parser.add_argument("-s", "--settings", default="default", help="the preset whose shape the steps share")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"which steps (default all: {','.join(STEPS)})")
    parser.add_argument("--out", default="models/ladder", help="where the models, ladder.json and ladder.png go")
    parser.add_argument("--seed", type=int, default=1337)


def one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat[:width] + ("…" if len(flat) > width else "")


def climb(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of the steps trained, and the signal that stopped the climb (Ctrl+C: the steps
    trained before it are compared; the one it stopped is saved where training saves interruptions)."""
    from ..api import TrainOptions, train

    steps = [s.strip().lower() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SettingError("steps", f"has unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    source = DataSource.from_args(args.datafile, args.datapath)
    out = Path(args.out)
    rows = []
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step}: {LECTURE_STEP_ABOUT[step]}", file=sys.stderr, flush=True)
        overrides: dict[str, Any] = {"max_seconds": args.budget, "max_iters": None, "eval_interval": 250,
                                     "eval_iters": 10}
        if step == "classic":
            overrides["dropout"] = LAST_STEP_DROPOUT
        try:
            result = train(TrainOptions(data=source, settings=args.settings, arch=step, iterations="forever",
                                        overrides=overrides, out=str(out / step), seed=args.seed, progress=False),
                           on_event=lambda event: None)
        except DataTooShort as e:  # its advice, --block-size, is a flag the ladder does not take
            raise RepytilianError(f"{e.found}. Use more data, or -s auto, whose context fits the text") from None
        if result.stopped_by:
            print(f"      stopped by {result.stopped_by} (saved to {result.saved_to})", file=sys.stderr, flush=True)
            return rows, result.stopped_by
        lm = result.language_model
        sample = lm.generate("", 120, seed=0)
        rows.append({"step": step, "adds": LECTURE_STEP_ABOUT[step], "parameters": lm.model.num_params(),
                     "steps_trained": result.state.step, "val_loss": result.val_loss,
                     "bits_per_byte": lm.meta.get("summary", {}).get("val_bits_per_byte"), "sample": sample})
        print(f"      val loss {result.val_loss:.4f} after {result.state.step:,} steps", file=sys.stderr, flush=True)
    return rows, None


def table(rows: list[dict[str, Any]], budget: float) -> str:
    lines = [f"the lecture's steps, {budget:g} s of training each:",
             f"{'step':<13} {'parameters':>10} {'steps':>6} {'val loss':>8} {'bits/byte':>9}  sample"]
    for r in rows:
        bpb = "-" if r.get("bits_per_byte") is None else f"{r['bits_per_byte']:.4f}"
        lines.append(f"{r['step']:<13} {r['parameters']:>10,} {r['steps_trained']:>6,} {r['val_loss']:>8.4f} "
                     f"{bpb:>9}  {one_line(r['sample'])}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, budget: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["step"] for r in rows]
    losses = [r["val_loss"] for r in rows]
    ax.bar(names, losses, color="#4c72b0")
    for x, loss in enumerate(losses):
        ax.text(x, loss, f"{loss:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("val loss (whole split)")
    ax.set_title(f"From a bigram table to the GPT: {budget:g} s of training each")
    ax.set_ylim(0, max(losses) * 1.12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ladder_command(args: argparse.Namespace) -> int:
    rows, stopped_by = climb(args)
    if not rows:
        return 130 if stopped_by else 0
    print(table(rows, args.budget))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.json").write_text(json.dumps({"budget_seconds": args.budget, "rows": rows}, indent=1) + "\n",
                                     encoding="utf-8")
    drawn = plot(rows, out / "ladder.png", args.budget)
    print(f"wrote {out / 'ladder.json'}" + (f" and {drawn}" if drawn else ""), file=sys.stderr)
    return 130 if stopped_by else 0  # a climb stopped early still compares the steps it made
