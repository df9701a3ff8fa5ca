"""The library entry points that the command lines are thin layers over: `train` and `load_model`.

`train` ties the pieces together (data -> tokenizer -> model -> trainer -> model directory);
`load_model` gives a `LanguageModel` that generates text. What happens is reported as events
(events.py), results are returned; nothing is printed (the CLI decides what reaches the terminal).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import DEFAULT_MODEL_DIR
from .errors import SettingError
from .events import Listener, in_words, to_logging
from .language_model import LanguageModel
from .runs.options import TrainOptions, TrainResult
from .runtime.device import pick_device
from .store.best import better_best
from .store.folder import load_model_dir

__all__ = ["LanguageModel", "TrainOptions", "TrainResult", "load_model", "train"]


def load_model(path: str | Path = DEFAULT_MODEL_DIR, device: str = "auto", which: str = "best") -> LanguageModel:
    """The model of a folder, to sample or evaluate. `which="best"`: where the run kept a best model
    (best/) that is better over the whole validation split than its last, that one, and
    `.best` says so (step and losses); `which="last"`: the folder's own, last model."""
    if which not in ("best", "last"):
        raise SettingError("which", f"is 'best' or 'last', not {which!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise SettingError("path", f"must be a model folder's path (str or pathlib.Path), got {path!r}")
    path = Path(path)
    best = better_best(path) if which == "best" else None
    loaded = load_model_dir(path / "best" if best else path, pick_device(device))
    lm = LanguageModel(loaded.model, loaded.tokenizer, loaded.meta, loaded.path)
    lm.best = best
    return lm


def train(opts: TrainOptions, log: Callable[[str], None] | None = None, on_event: Listener | None = None
          ) -> TrainResult:
    """Train a new model, or continue a saved one (`opts.load`), and save it to `opts.out`.

    What happens is reported as events (events.py) to `on_event`, as are the notes of the code it
    calls (events.note) and its progress; or their words to `log` (e.g. `print`); with neither, to
    Python's logging (logger "repytilian")."""
    from .runs.running import (
        run_training,  # the training machinery: not imported to generate
    )

    report = on_event or (in_words(log) if log is not None else to_logging)
    return run_training(opts, report)
