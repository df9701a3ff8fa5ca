"""How a step's windows go through the model: shared by the processes, fed in micro-batches that
fit in the device's free memory (the step learns from the same windows either way)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig, TrainConfig
from ..errors import SettingError
from .memory import available_bytes, largest_fitting, training_bytes_per_window


@dataclass
class BatchPlan:
    """How a step's `batch_size` windows go through the model: shared by `ranks` processes, each
    feeding its share in `accum` micro-batches of `micro_batch` windows."""

    micro_batch: int
    accum: int
    ranks: int = 1
    why: str | None = None  # said when the windows were split to fit in memory

    def describe(self) -> str:
        parts = [f"{self.micro_batch} windows a forward pass"]
        if self.accum > 1:
            parts.append(f"{self.accum} micro-batches a step")
        if self.ranks > 1:
            parts.append(f"on each of {self.ranks} processes")
        return ", ".join(parts)


def plan_batches(cfg: TrainConfig, mcfg: ModelConfig, ranks: int = 1, device: torch.device | None = None,
                 dtype: str = "float32", available: int | None = -1) -> BatchPlan:
    """The micro-batches of a step: as --grad-accum or --micro-batch say, else as few as fit in the
    device's free memory (`available`: -1 asks the device). The step learns from the same windows
    either way, so only speed and memory depend on it."""
    B = cfg.batch_size
    if B % ranks:
        raise SettingError("batch_size", f"{{setting}} {B} cannot be shared by {ranks} processes: use a multiple of "
                           f"{ranks} (each process takes batch-size / {ranks} windows of every step)")
    per = B // ranks
    where = f"each of {ranks} processes' {per}" if ranks > 1 else f"the {per}"
    if cfg.grad_accum is not None and per % cfg.grad_accum:
        raise SettingError("grad_accum", f"{where} windows of a step do not split into {cfg.grad_accum} "
                           "micro-batches: use a divisor")
    if cfg.micro_batch is not None and per % cfg.micro_batch:
        raise SettingError("micro_batch", f"{where} windows of a step do not split into micro-batches of "
                           f"{cfg.micro_batch}: use a divisor")
    if cfg.grad_accum is not None and cfg.micro_batch is not None and cfg.grad_accum * cfg.micro_batch != per:
        raise SettingError("micro_batch", f"and `grad_accum` {cfg.grad_accum} disagree ({cfg.grad_accum} x "
                           f"{cfg.micro_batch} is not {per}): give one of them")
    if cfg.grad_accum is not None:
        return BatchPlan(per // cfg.grad_accum, cfg.grad_accum, ranks)
    if cfg.micro_batch is not None:
        return BatchPlan(cfg.micro_batch, per // cfg.micro_batch, ranks)
    device = device or torch.device("cpu")
    free = available_bytes(device) if available == -1 else available
    per_window = training_bytes_per_window(mcfg, dtype)
    micro = largest_fitting(per, per_window, free)
    why = None
    if micro < per:
        why = (f"note: {per} windows of {mcfg.block_size} tokens need about {per * per_window / 2**30:.1f} GiB "
               f"for one pass, more than half the {free / 2**30:.1f} GiB free: each step feeds them in "
               f"{per // micro} micro-batches of {micro} (same result, `micro_batch` sets it)")
    return BatchPlan(micro, per // micro, ranks, why)
