"""Optional experiment trackers: Weights & Biases (`--wandb`) and TensorBoard (`--tensorboard DIR`).

Off by default, and each library is imported only when its flag is given, so neither is a
dependency. Every evaluation's figures (train and val loss, learning rate, tokens seen, time)
go to each tracker, and the final whole-split val loss at the end. W&B's own switch
WANDB_MODE=offline makes it write locally with no network (`wandb sync` uploads later).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import RepytilianError, SettingError

SCALARS = ("train_loss", "val_loss", "lr", "tokens", "time")


class Tracker(Protocol):
    def log(self, entry: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise SettingError("wandb", "needs the wandb package: pip install wandb") from None
    return wandb


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SettingError("tensorboard", "needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class WandbTracker:
    def __init__(self, config: dict[str, Any], name: str | None):
        self.run = _wandb().init(project=os.environ.get("WANDB_PROJECT", "repytilian"), name=name, config=config)

    def log(self, entry: dict[str, Any]) -> None:
        self.run.log({k: entry[k] for k in SCALARS if k in entry}, step=entry["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()


class TensorBoardTracker:
    def __init__(self, log_dir: str, config: dict[str, Any]):
        writer = _summary_writer()
        try:
            self.writer = writer(log_dir=log_dir)
        except OSError as e:
            raise RepytilianError(f"cannot write TensorBoard logs to {log_dir}: {e.strerror or e}") from None
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())))

    def log(self, entry: dict[str, Any]) -> None:
        for key in ("train_loss", "val_loss", "lr"):
            if key in entry:
                self.writer.add_scalar(key if key == "lr" else f"loss/{key.removesuffix('_loss')}", entry[key],
                                       entry["step"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if summary.get("val_loss_full") is not None:
            self.writer.add_scalar("loss/val_whole_split", summary["val_loss_full"], summary.get("step", 0))
        self.writer.close()


def check_trackers(wandb: bool, tensorboard_dir: str | None) -> None:
    """What would stop the trackers from opening, found before the data is read (a large corpus
    takes minutes to tokenize) rather than as the run starts."""
    from pathlib import Path

    from ..store.lock import check_writable

    if tensorboard_dir:
        _summary_writer()
        check_writable(Path(tensorboard_dir), "write TensorBoard logs to", "give `tensorboard` another folder",
                       ("tensorboard",), inside=True)
    if wandb:
        _wandb()


def open_trackers(wandb: bool, tensorboard_dir: str | None, config: dict[str, Any],
                  name: str | None = None) -> list[Tracker]:
    trackers: list[Tracker] = []
    if tensorboard_dir:
        trackers.append(TensorBoardTracker(tensorboard_dir, config))
    if wandb:
        trackers.append(WandbTracker(config, name))
    return trackers


def log_all(trackers: Sequence[Tracker], entry: dict[str, Any]) -> None:
    for tracker in trackers:
        tracker.log(entry)


def finish_all(trackers: Sequence[Tracker], summary: dict[str, Any]) -> None:
    for tracker in trackers:
        tracker.finish(summary)
