"""Save and load a model directory: JSON for what people read, safetensors for tensors, no pickle.

    config.json          format version, model config, tokenizer kind, training config, data, summary
    tokenizer.json       the vocabulary, written by the tokenizer itself
    model.safetensors    the weights (a tied output head is stored once, as `transformer.wte.weight`)
    trainer_state/       state.json (step, schedule, metrics) + tensors.safetensors (AdamW moments,
                         RNG states): everything `-l` needs to resume exactly
    metrics.jsonl        one JSON line per evaluation

A save writes the whole directory under a temporary name beside the target, fsyncs it, and then
swaps it in with renames, so a crash leaves either the old complete model or the new one.
Loading checks every header against the config before a tensor is built.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import __version__
from ..chat_format import ChatFormat
from ..config import TrainConfig, approx_params
from ..errors import RepytilianError
from ..lora import merged_state_dict
from ..model import GPT, ModelConfig
from ..runtime.fileio import exchange_paths, fsync_dir, fsync_tree, pid_alive, shareable
from ..tokenizers import Tokenizer, tokenizer_from_json
from .card import model_card, plot_loss
from .lock import check_writable
from .missing import LegacyFolder, explain_missing, model_folders_in

FORMAT = "repytilian-model"
FORMAT_VERSION = 1
TIED_KEYS = ("lm_head.weight",)  # equal to transformer.wte.weight where tied; then stored once

OUR_ENTRIES = {"config.json", "tokenizer.json", "model.safetensors", "trainer_state", "metrics.jsonl",
               "README.md", "loss.png", "best"}  # best/: the best model by val loss, a model folder itself
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def stored_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors model.safetensors holds: the state dict, a tied head only once."""
    tied = model.config.tie_embeddings
    state = merged_state_dict(model.state_dict())  # LoRA adapters (lora.py) merged: an ordinary model
    return {k: v for k, v in state.items() if not (tied and k in TIED_KEYS)}


@dataclass
class LoadedModel:
    """What a model directory holds, ready to use. `trainer` is only read when asked for."""

    path: Path
    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]
    trainer: dict[str, Any] | None = None  # {"state": dict, "param_groups": list, "tensors": dict}

    @property
    def train_config(self) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.meta.get("train", {}).items() if k in known})


# --- saving ------------------------------------------------------------------------------


def check_target(path: Path) -> None:
    """Refuse, before any training, a target that is a file, a folder with things other than a
    model, or a place where nothing can be written (the save, or its lock beside it, would fail)."""
    if path.exists() and not path.is_dir():
        raise RepytilianError(f"cannot save the model to {path}: it is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise RepytilianError(
            f"{path} already exists and is not a Repytilian model folder; refusing to write into it. "
            "Choose a new folder as `out`", ("out",)
        )
    check_writable(path, "save the model to", "choose another folder as `out`", ("out",))


def _write_trainer_state(folder: Path, trainer_state: dict[str, Any]) -> None:
    """A Trainer.state_dict(): its tensors to safetensors, the rest to JSON."""
    folder.mkdir()
    save_file(trainer_state["tensors"], folder / "tensors.safetensors")
    state = {"state": trainer_state["state"], "param_groups": trainer_state["param_groups"]}
    (folder / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def save_model_dir(path: str | Path, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any],
                   trainer_state: dict[str, Any] | None = None, card: bool = False, sample: str | None = None,
                   metrics: list[dict[str, Any]] | None = None,
                   inside: Callable[[Path], Any] | None = None) -> Path:
    """Write a complete model directory at `path`, atomically replacing any model there.

    `trainer_state` is a Trainer.state_dict() (plain data and tensors): with it, `-l` continues exactly.
    `metrics` (the evaluations, for metrics.jsonl and the loss plot) are the trainer state's if not given.
    `inside(folder)` adds to the new folder before it is swapped in (the best model's best/, so the
    folder and its best/ appear together). The weights are stored in the dtype the model holds them in (float32, or float16/bf16 for a
    smaller folder); loading gives float32 whatever they are stored in.

    A failure (a full disk, a folder without write permission) is a RepytilianError, and leaves
    whatever model was at `path` as it was.
    """
    target = Path(path)
    check_target(target)
    try:
        return _save(target, model, tokenizer, meta, trainer_state, card, sample, metrics, inside)
    except OSError as e:
        had = " the model that was there is intact;" if (target / "config.json").is_file() else ""
        raise RepytilianError(f"could not save to {target}: {e.strerror or e};{had} free some space or "
                              "choose another folder as `out`", ("out",)) from None


def _clean_leftovers(target: Path) -> None:
    """Remove what a killed save left beside `target`: staging folders, and old copies once the
    target itself is complete again (a process killed with SIGKILL cannot clean up)."""
    for pattern in (f".{target.name}.saving-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            pid = leftover.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
                continue
            if ".old-" in leftover.name and not (target / "config.json").is_file():
                continue  # the only complete copy: explain_missing tells the user where it is
            if (target / "config.json").is_file():
                _keep_users_files(leftover, target)  # a kill -9 after a swap: the user's files survive
            shutil.rmtree(leftover, ignore_errors=True)


def _save(target: Path, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any],
          trainer_state: dict[str, Any] | None, card: bool = False, sample: str | None = None,
          metrics: list[dict[str, Any]] | None = None, inside: Callable[[Path], Any] | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    staging = target.parent / f".{target.name}.saving-{os.getpid()}"
    staging.mkdir()
    try:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_by": f"repytilian {__version__}",
                  "model": dataclasses.asdict(model.config), "tokenizer": tokenizer.name, **meta}
        chat = ChatFormat.of(tokenizer)
        if chat is not None:  # the template every consumer renders a conversation with (chat_format.py)
            config["chat"] = chat.to_dict()
        (staging / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        tokenizer.save(staging / "tokenizer.json")
        weights = {k: v.detach().cpu().contiguous() for k, v in stored_weights(model).items()}
        save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
        if metrics is None:
            metrics = [] if trainer_state is None else trainer_state["state"].get("metrics", [])
        if trainer_state is not None:
            _write_trainer_state(staging / "trainer_state", trainer_state)
        if trainer_state is not None or metrics:
            lines = "".join(json.dumps(m) + "\n" for m in metrics)
            (staging / "metrics.jsonl").write_text(lines, encoding="utf-8")
        if card:  # the model card and loss plot: for finished and interrupted runs, not every checkpoint
            (staging / "README.md").write_text(model_card(config, sample), encoding="utf-8")
            if metrics:
                plot_loss(metrics, staging / "loss.png", title=str(target))
        if inside is not None:
            inside(staging)
        shareable(staging)
        fsync_tree(staging)
        with _signals_deferred():  # a Ctrl+C may abandon the save, but never between the two renames
            _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGUSR1 until the block ends, then hand them to their handlers.

    Done with Python-level handlers rather than a thread signal mask: the kernel may deliver a
    signal to any thread (torch starts several), but Python always runs handlers in the main one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread, so nothing can interrupt this one
        return
    caught: list[int] = []
    signals = [s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s]
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in caught:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # its default action, now that the swap is done


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
    else:
        # One atomic exchange where the system has it (the previous model then sits at the staging
        # name); two renames elsewhere, with a moment in which only `.old-` holds the model.
        if exchange_paths(staging, target):
            old = staging
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
            os.rename(staging, target)
        _keep_users_files(old, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


def _keep_users_files(old: Path, target: Path) -> None:
    """Move what the user put beside the model (notes, plots) from a previous copy into the new one."""
    for entry in old.iterdir():
        if entry.name not in OUR_ENTRIES and not (target / entry.name).exists():
            os.rename(entry, target / entry.name)


def interrupted_dir(root: str | Path = "models") -> Path:
    """A fresh `models/interrupted/<timestamp>/` folder name that no earlier save used."""
    base = Path(root) / "interrupted" / time.strftime("%Y-%m-%d_%H-%M-%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    return path


# --- loading -----------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepytilianError(f"{path.parent} is missing {path.name}; the model folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RepytilianError(f"{path} is damaged (not valid JSON: {e})") from None


def read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise explain_missing(path)
    if not path.is_dir():
        raise RepytilianError(f"{path} is a file; a model is a folder holding config.json and model.safetensors")
    if not (path / "config.json").is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if (path / "token_embedding_table.pt").is_file():
            raise LegacyFolder(path)
        if pickles:
            raise RepytilianError(
                f"{path} holds {', '.join(sorted(pickles)[:3])}: pickled files, which can run code when loaded, "
                "so Repytilian does not load them. Only folders with config.json and model.safetensors load"
            )
        inside = model_folders_in(path)
        if inside:  # -m models/shakespeare: a folder of models
            raise RepytilianError(f"{path} is a folder of models ({', '.join(p.name for p in inside)}), not a model: "
                                  f"give one of them, such as {inside[0]}")
        raise RepytilianError(f"{path} is not a Repytilian model folder (no config.json)")
    meta = _read_json(path / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RepytilianError(f"{path}/config.json is not a Repytilian model config")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RepytilianError(
            f"{path} was saved in model format {version!r}, newer than this Repytilian ({__version__}) "
            f"reads (format {FORMAT_VERSION}); upgrade Repytilian to load it"
        )
    return meta


# The JSON types a model config's field takes, by its default's type (true and false are not numbers)
_ACCEPTED = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"), float: ((int, float), "a number"),
             str: ((str,), "a string")}


def _check_types(values: Any) -> None:
    """A TypeError naming the first value whose JSON type is not its field's (a hand-edited
    "n_layer": "four" otherwise failed deep inside, in Python's own words)."""
    if not isinstance(values, dict):
        raise TypeError("its model section is not a JSON object")
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    defaults["attention_dropout"] = 0.0  # None (the dropout's) or a number
    for name, value in values.items():
        accepted = _ACCEPTED.get(type(defaults.get(name)))
        if accepted is None or value is None and name == "attention_dropout":  # unknown names: the config's own error
            continue
        wanted, kind = accepted
        if not isinstance(value, wanted) or isinstance(value, bool) and bool not in wanted:
            raise TypeError(f"{name} must be {kind}, got {json.dumps(value)}")


def _model_config(meta: dict[str, Any], where: Path) -> ModelConfig:
    try:
        _check_types(meta["model"])
        cfg = ModelConfig(**meta["model"])
        cfg.validate()
    except (KeyError, TypeError, ValueError) as e:
        raise RepytilianError(f"{where}/config.json has an invalid model config ({e})") from None
    return cfg


def _check_weights(file: Path, expected: dict[str, torch.Size]) -> None:
    """Compare the safetensors header with the shapes the config implies, before reading any data."""
    if not file.is_file():
        raise RepytilianError(f"{file.parent} is missing {file.name}; the model folder is incomplete")
    try:
        with safe_open(file, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RepytilianError(f"{file} is damaged or truncated ({e})") from None
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k]) != shapes[k])
    if missing or extra or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(names[:3])}" for label, names in
            (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if names
        )
        raise RepytilianError(f"{file} does not match its config.json ({detail})")


def load_model_dir(path: str | Path, device: str | torch.device = "cpu", with_trainer: bool = False) -> LoadedModel:
    path = Path(path)
    meta = read_config(path)
    mcfg = _model_config(meta, path)
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise RepytilianError(f"{path} is missing tokenizer.json; the model folder is incomplete")
    kind = meta.get("tokenizer")
    if not isinstance(kind, str):
        raise RepytilianError(f"{path}/config.json does not say which tokenizer the model uses")
    tokenizer = tokenizer_from_json(tok_file.read_text(encoding="utf-8"), kind, str(tok_file))
    if tokenizer.vocab_size != mcfg.vocab_size:
        raise RepytilianError(
            f"{path}: tokenizer.json has {tokenizer.vocab_size} tokens but the model expects {mcfg.vocab_size}"
        )
    _within_the_file(mcfg, path / "model.safetensors")  # before anything of that size is allocated
    model = GPT(mcfg)
    _check_weights(path / "model.safetensors", {k: v.shape for k, v in stored_weights(model).items()})
    state = load_file(path / "model.safetensors")
    if mcfg.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    model.to(device)
    loaded = LoadedModel(path=path, model=model, tokenizer=tokenizer, meta=meta)
    if with_trainer:
        loaded.trainer = _read_trainer_state(path / "trainer_state")
    return loaded


def _within_the_file(mcfg: ModelConfig, weights: Path) -> None:
    """Refuse a config whose model its weights file could not hold (two bytes a weight at the least),
    with room to spare, so that a damaged config.json never allocates a model of its size. (Building
    the model on the meta device to read its shapes imports torch's compiler: 2.5 s of start-up.)"""
    if not weights.is_file():
        return  # _check_weights says it is missing
    params = approx_params(max(mcfg.n_layer, 0), mcfg.n_embd, mcfg.block_size, mcfg.vocab_size)
    size = weights.stat().st_size
    if 2 * params > 4 * size + (16 << 20):
        raise RepytilianError(f"{weights.parent}/config.json describes a model of about {params:,} parameters, "
                              f"more than model.safetensors ({size:,} bytes) holds: the folder is damaged")


def _read_trainer_state(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise RepytilianError(
            f"{folder.parent} has no trainer_state/ (it was saved without the optimiser state), "
            "so training cannot continue from it exactly"
        )
    info = _read_json(folder / "state.json")
    try:
        tensors = load_file(folder / "tensors.safetensors")
    except FileNotFoundError:
        raise RepytilianError(f"{folder} is missing tensors.safetensors; the model folder is incomplete") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise RepytilianError(f"{folder}/tensors.safetensors is damaged or truncated ({e})") from None
    return {"state": info.get("state", {}), "param_groups": info.get("param_groups", []), "tensors": tensors}


