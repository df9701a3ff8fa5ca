"""What a training run is asked for (`TrainOptions`) and what it gives back (`TrainResult`)."""
from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_DIR, MODEL_FIELDS, TRAIN_FIELDS, typed
from ..data.corpus import DataSource
from ..errors import RepytilianError, SettingError
from ..language_model import LanguageModel
from ..runtime.signals import StopRequest
from ..schedule import TrainState


@dataclass
class TrainOptions:
    """A run, as typed settings: presets by name (`settings`, `iterations`, `arch`) and config fields
    set one by one in `overrides` (name -> a value of the field's type, checked here, once: a
    number given as text is refused, the command line having read its text already)."""

    data: DataSource | str | Path | None = None  # a file or folder; None: the loaded model's data, else Tiny Shakespeare
    tokenizer: str | None = None  # None: the loaded model's, else characters
    tokenizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"vocab_size": 512} for bpe
    settings: str = "default"
    arch: str | None = None  # None: the settings preset's (classic but for `quarter`), or with `load` the loaded model's
    iterations: str | int | None = None  # a preset or steps; None: "default" (or, with `load`, finish the saved schedule)
    overrides: dict[str, Any] = field(default_factory=dict)  # config field name -> typed value
    out: str | None = DEFAULT_MODEL_DIR  # "" or None: save nothing at the end
    load: str | None = None
    device: str = "auto"
    seed: int | None = None
    progress: bool = True
    interrupt_root: str = "models"  # interrupted runs go to <root>/interrupted/<timestamp>/
    stop: StopRequest | None = None  # lets a caller (a test, a server) stop training early
    wandb: bool = False  # log each evaluation to Weights & Biases
    tensorboard: str | None = None  # ...and/or to TensorBoard logs in this folder
    measure_dtype: bool = False  # dtype auto: measure again instead of taking the remembered choice
    lora: int | None = None  # fine-tune `load` with low-rank adapters of this rank (lora.py), merged at save

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainOptions:
        # Python's "unexpected keyword argument 'iteration'", naming the one meant; a config
        # field given here (`learning_rate=...`) is told to go in `overrides`
        names = [f.name for f in dataclasses.fields(cls)]
        for name in kwargs:
            if name not in names:
                meant = difflib.get_close_matches(name, names, 1, cutoff=0.75)
                hint = (f" (did you mean {meant[0]!r}?)" if meant else
                        f" (a setting goes in overrides={{{name!r}: ...}})" if name in MODEL_FIELDS | TRAIN_FIELDS else "")
                raise TypeError(f"TrainOptions got an unexpected keyword argument {name!r}{hint}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.overrides = {name: typed(name, value) if value is not None else None
                          for name, value in self.overrides.items()}
        if self.data is not None:  # a path, as a Python user writes it: a file or a folder
            self.data = DataSource.of(self.data)
        self.load, self.out = (str(p) if isinstance(p, os.PathLike) else p for p in (self.load, self.out))
        # presets by name in any case, as typed (`-s Tiny`, `-i Quick`); their names are lower-case
        self.settings, self.arch, self.iterations = (v.lower() if isinstance(v, str) else v
                                                     for v in (self.settings, self.arch, self.iterations))
        if isinstance(self.iterations, str) and self.iterations.strip().isdigit():  # "500", as the command line's
            self.iterations = int(self.iterations)
        if isinstance(self.iterations, numbers.Integral) and not isinstance(self.iterations, bool):  # steps, as `-i 500`
            if self.overrides.get("max_iters", self.iterations) != self.iterations:
                raise SettingError("iterations", f"is {self.iterations} steps and max_iters "
                                   f"{self.overrides['max_iters']}: give one of them", ("max_iters",))
            self.overrides["max_iters"], self.iterations = typed("max_iters", int(self.iterations)), None

    def check_start(self, main: bool = True) -> None:
        """What would stop the run at its start, found before the data is read (a large corpus takes
        minutes to tokenize): `main`, the process that saves and logs, checks the target and trackers."""
        from ..interop.trackers import check_trackers
        from ..store.folder import check_target

        if self.lora and not self.load:
            raise RepytilianError("`lora` fine-tunes a trained model: give the model folder as `load`", ("lora", "load"))
        if main:
            check_trackers(self.wandb, self.tensorboard)
            if self.out:
                check_target(Path(self.out))


@dataclass
class TrainResult:
    language_model: LanguageModel
    saved_to: Path | None
    stopped_by: str | None  # the signal that stopped training early, or None
    val_loss: float | None  # over the whole validation split, for finished runs
    state: TrainState
    main: bool = True  # False in the processes of a torchrun job other than rank 0 (which saved and spoke)
