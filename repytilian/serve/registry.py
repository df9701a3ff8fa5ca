"""Which model folders the server may open: those under its models folder, found by a scan.

A request names a model by its id (its path under the models folder, e.g. `shakespeare/v2c`), and
only ids the scan found are opened, so no request can reach a folder elsewhere: `..` in an id,
an absolute path, or a symlink that leads out of the models folder are never in the list. No
file is read that resolves outside the models folder: a card, a live-metrics file or a weights
file symlinked elsewhere is treated as absent (`readable`, `contained`).

Loaded models are kept, at most `max_loaded` of them (the least recently used is let go first),
each under a key of its weights file (modification time in nanoseconds, inode, size), so that a
folder replaced in place is loaded again, never served stale.

A folder whose run kept a best model that beats its last (best/) serves the best under its id, and
its last model under `<id>@last`: two checkpoints of one run, to generate from or compare.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..api import LanguageModel, load_model
from ..errors import RepytilianError
from ..store.best import best_in

LOADED_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # what store.folder reads to load a model
MAX_DEPTH = 4  # models/<group>/<name> and a little more; the scan stays quick on a big folder
FOUND_SECONDS = 1.0  # how long a model a request found is found again without reading its folder (Registry._lookup)
LAST = "@last"  # `<id>@last`: the folder's last model, where a better best is what `<id>` serves


class ModelNotFound(RepytilianError):
    pass


@dataclass
class ModelInfo:
    id: str
    path: Path
    tokenizer: str
    parameters: int | None
    val_loss: float | None
    steps: int | None
    created: int
    ready: bool = True  # False: a first run is still training into this folder; nothing saved yet
    which: str = "best"  # "last": the folder's own, last model (`<id>@last`)
    last: dict[str, Any] | None = None  # where best/ beats the last model: the last's step and loss
    chat_format: bool = False  # fine-tuned to chat: config.json has the chat format (chat_format.py)
    bits_per_byte: float | None = None  # val_loss on every tokenizer's scale (evaluate.py)

    @property
    def is_text(self) -> bool:
        return self.tokenizer != "json"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tokenizer": self.tokenizer, "parameters": self.parameters, "val_loss": self.val_loss,
                "steps": self.steps, "chat": self.is_text and self.ready, "ready": self.ready,
                "last_model": self.id + LAST if self.last else None, "chat_format": self.chat_format,
                "bits_per_byte": self.bits_per_byte}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root)
        return True
    except (OSError, ValueError):
        return False


def _live_target(name: str) -> str | None:
    """The folder a `.<name>.live.jsonl` file is about, when <name> is a plain folder name."""
    if not (name.startswith(".") and name.endswith(".live.jsonl")):
        return None
    target = name[1:-len(".live.jsonl")]
    return target if target not in ("", ".", "..") and not target.startswith(".") else None


def _weights_key(folder: Path) -> tuple:
    """What changes when a model folder is replaced: its weights files' (path, mtime in ns, inode, size)."""
    return tuple(_file_key(path) for path in (folder / "model.safetensors", folder / "best" / "model.safetensors",
                                              folder / "config.json"))


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
        return str(path), st.st_mtime_ns, st.st_ino, st.st_dev, st.st_size
    except OSError:
        return str(path), None


def _holds_models(folder: Path) -> bool:
    try:
        return any(_info(child.name, child) is not None for child in folder.iterdir() if child.is_dir())
    except OSError:
        return False


def _info(model_id: str, folder: Path) -> ModelInfo | None:
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != "repytilian-model":
        return None
    summary = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
    tokenizer = meta.get("tokenizer")
    if isinstance(tokenizer, dict):
        tokenizer = tokenizer.get("kind") or tokenizer.get("name")
    best = best_in(summary)
    val_loss = best["val_loss_full"] if best else summary.get("val_loss_full")  # best/ is what is served
    last = {"steps": best["last_step"], "val_loss": best["last_val_loss_full"]} if best else None
    bpb = _bits_per_byte(val_loss, summary)
    return ModelInfo(model_id, folder, str(tokenizer or "?"), summary.get("parameters"),
                     val_loss, summary.get("step"),
                     int((folder / "config.json").stat().st_mtime), last=last,
                     chat_format=isinstance(meta.get("chat"), dict), bits_per_byte=bpb)


def _model_here(model_id: str, folder: Path) -> ModelInfo | None:
    """The model in `folder`, or None where it holds none (the scan then looks inside it)."""
    return _info(model_id, folder) if (folder / "config.json").is_file() else None


def _bits_per_byte(val_loss: Any, summary: dict[str, Any]) -> float | None:
    """Bits per byte of `val_loss`, from the run's own pair of figures: the same text, so the same
    ratio (a best model's loss is on the last model's validation split)."""
    try:
        return round(val_loss * summary["val_bits_per_byte"] / summary["val_loss_full"], 4)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _last_of(info: ModelInfo) -> ModelInfo:
    """`<id>@last`: the folder's last model, beside the better best/ that `<id>` serves."""
    if not info.last:
        raise ModelNotFound(f"{info.id} keeps no better best model, so its last model is {info.id} itself")
    bpb = None if info.bits_per_byte is None else round(info.bits_per_byte * info.last["val_loss"] / info.val_loss, 4)
    return replace(info, id=info.id + LAST, which="last", val_loss=info.last["val_loss"],
                   steps=info.last["steps"], last=None, bits_per_byte=bpb)


class Registry:
    """The models under `root` (or the one folder `single`), each loaded on first use and kept."""

    def __init__(self, root: Path | None = None, single: Path | None = None, device: str = "cpu",
                 max_loaded: int = 4, compile: bool = False, dtype: torch.dtype | None = None):
        if (root is None) == (single is None):
            raise ValueError("give a models folder or one model folder")
        if root is not None and _info(root.name, root) is not None:  # `--models models/x`: one model's folder
            root, single = None, root
        if single is not None and _info(single.name, single) is None and _holds_models(single):
            raise RepytilianError(f"{single} is a folder of models, not a model: serve them all with `models`",
                                  ("models",))
        self.single = single.resolve() if single is not None else None
        self.root = (root or single.parent).resolve()
        self.device = device
        self.max_loaded = max_loaded
        self.compile = compile  # build each model's decoding step as it is loaded (decode_compiled.py)
        self.dtype = dtype  # the decoding matrices' format (serve --dtype; None: the machine's choice)
        self._loaded: OrderedDict[str, tuple[tuple, LanguageModel]] = OrderedDict()  # least recently used first
        self._found: dict[str, tuple[ModelInfo, tuple, float]] = {}  # id: what _lookup found, its config's key, when
        self._lock = threading.Lock()
        if self.single is not None and _info(self.single.name, self.single) is None:
            raise RepytilianError(f"{single} is not a model folder (no Repytilian config.json in it)")
        if self.single is None and not self.root.is_dir():
            raise RepytilianError(f"{root} is not a folder; give the folder your models are in as `models`", ("models",))

    def scan(self, training: bool = False) -> list[ModelInfo]:
        """The model folders; with `training`, also those a first run is training into (no model yet)."""
        if self.single is not None:
            info = _info(self.single.name, self.single)
            return [info] if info else []
        found: list[ModelInfo] = []
        self._walk(self.root, 0, found)
        return sorted((m for m in found if training or m.ready), key=lambda m: m.id)

    def _walk(self, folder: Path, depth: int, found: list[ModelInfo]) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        children = [p for p in entries if not p.name.startswith(".")]
        names = {p.name for p in children}
        for entry in entries:  # `.<name>.live.jsonl`: a run training into <name> (store/live.py)
            target_name = _live_target(entry.name)
            if target_name is not None and target_name not in names:
                target = folder / target_name
                if _inside(entry, self.root) and entry.is_file():
                    found.append(ModelInfo(target.relative_to(self.root).as_posix(), target, "?", None, None, None,
                                           int(time.time()), ready=False))
        for child in children:
            if not child.is_dir() or not _inside(child, self.root):  # a symlink out of the root is skipped
                continue
            info = _model_here(child.relative_to(self.root).as_posix(), child)
            if info is not None:
                found.append(info)
                continue
            if depth + 1 < MAX_DEPTH:
                self._walk(child, depth + 1, found)

    def find(self, model_id: Any, training: bool = False) -> ModelInfo:
        if isinstance(model_id, str) and model_id.endswith(LAST) and len(model_id) > len(LAST):
            return _last_of(self.find(model_id[:-len(LAST)], training))
        info = self._lookup(model_id) if isinstance(model_id, str) else None
        if info is not None and (info.ready or training):
            return info
        if info is not None:
            raise ModelNotFound(f"{model_id} is still training its first model; nothing is saved to "
                                "generate from yet")
        raise ModelNotFound(f"no model {model_id!r} here; GET /v1/models lists them")

    def _lookup(self, model_id: str) -> ModelInfo | None:
        """`_look_along` of `model_id`, found again without reading the folder for FOUND_SECONDS
        while its config.json is the same file, unchanged (one stat): looking cost ~170 us a
        request, a quarter of the event loop's time under 8 clients asking for short answers.
        Only a model ready to generate from is remembered; a folder that changes is looked at anew."""
        config = (self.single if self.single is not None else self.root / model_id) / "config.json"
        key = _file_key(config)  # before looking: a config changed meanwhile is looked at again next time
        kept = self._found.get(model_id)
        if kept is not None and kept[1] == key and time.monotonic() - kept[2] < FOUND_SECONDS:
            return kept[0]
        info = self._look_along(model_id)
        if info is not None and info.ready and info.path / "config.json" == config:
            self._found[model_id] = (info, key, time.monotonic())
        else:
            self._found.pop(model_id, None)
        return info

    def _look_along(self, model_id: str) -> ModelInfo | None:
        """What `scan(training=True)` would list under `model_id`, looking only along its path: a
        request reads a few entries and one config.json, not every model folder (a scan per request
        was 40% of the event loop's time under 8 clients)."""
        if self.single is not None:
            return next((info for info in self.scan() if info.id == model_id), None)
        parts = model_id.split("/")
        if not 1 <= len(parts) <= MAX_DEPTH or any(not part or part.startswith(".") for part in parts):
            return None
        folder = self.root
        for part in parts[:-1]:  # the scan goes down through folders inside the root that are not models
            folder = folder / part
            if not folder.is_dir() or not _inside(folder, self.root) or _model_here(model_id, folder):
                return None
        target = folder / parts[-1]
        if target.is_dir() and _inside(target, self.root):
            return _model_here(model_id, target)
        live = folder / f".{parts[-1]}.live.jsonl"  # a first run training into a folder not made yet
        if not (target.exists() or target.is_symlink()) and live.is_file() and _inside(live, self.root):
            return ModelInfo(model_id, target, "?", None, None, None, int(time.time()), ready=False)
        return None

    def default(self) -> ModelInfo:
        models = self.scan()
        if not models:
            raise ModelNotFound(f"there is no model under {self.root} yet; train one with training.py -m DIR")
        return models[0]

    def readable(self, path: Path) -> Path | None:
        """`path` if it is a file that resolves inside the models folder, else None (treated as absent)."""
        return path if path.is_file() and _inside(path, self.root) else None

    def contained(self, info: ModelInfo) -> bool:
        """Every file loading the folder reads (and those of its best/) resolves inside the models folder."""
        files = [folder / name for folder in (info.path, info.path / "best")
                 for name in LOADED_FILES if (folder / name).exists() or (folder / name).is_symlink()]
        return all(_inside(p, self.root) for p in files)

    def loaded(self, info: ModelInfo) -> LanguageModel | None:
        """The folder's model if it is loaded and unchanged (no loading: cheap enough for the event loop)."""
        with self._lock:
            kept = self._loaded.get(info.id)
            if kept is not None and kept[0] == _weights_key(info.path):
                self._loaded.move_to_end(info.id)
                return kept[1]
        return None

    def load(self, info: ModelInfo) -> LanguageModel:
        """The folder's model, loaded once while it stays the same (call it off the event loop)."""
        with self._lock:  # one load at a time, however many requests ask at once
            key = _weights_key(info.path)
            kept = self._loaded.get(info.id)
            if kept is not None and kept[0] == key:
                self._loaded.move_to_end(info.id)
                return kept[1]
            if not self.contained(info):
                raise ModelNotFound(f"model {info.id} has files outside the models folder, so it is not opened")
            # New, or replaced since it was loaded. Opened as every surface opens a folder: its
            # best model where the run kept a better one.
            lm = load_model(info.path, device=self.device, which=info.which)
            lm.engine.dtype = self.dtype
            if self.compile:  # built now, while loading, not while a request decodes
                lm.engine.compile = True
                lm.engine.prepare(rows=True)
            self._loaded[info.id] = (key, lm)
            self._loaded.move_to_end(info.id)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return lm
