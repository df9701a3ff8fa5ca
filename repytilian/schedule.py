"""Where a run is (`TrainState`: its step, schedule, tokens, time and evaluations: what resuming
needs besides the weights and the optimiser) and the learning rate it takes at each step."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import TrainConfig


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken in total
    schedule_start: int = 0  # the step at which the current LR schedule began (0, or where a run was extended)
    max_iters: int | None = None  # the step at which the schedule ends; None trains until stopped
    tokens_seen: int = 0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @property
    def finished(self) -> bool:
        return self.max_iters is not None and self.step >= self.max_iters


def learning_rate(step: int, cfg: TrainConfig, state: TrainState) -> float:
    """Linear warm-up, then cosine decay to min_lr at the end of the schedule (constant if endless).

    The end is the step budget, the time budget (cfg.max_seconds), or whichever is nearer.
    """
    it = step - state.schedule_start
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    fractions = []
    if state.max_iters is not None:
        decay_steps = max(1, state.max_iters - state.schedule_start - cfg.warmup_iters)
        fractions.append((it - cfg.warmup_iters) / decay_steps)
    if cfg.max_seconds is not None:
        fractions.append(state.train_seconds / cfg.max_seconds)
    if not fractions:
        return cfg.learning_rate
    progress = min(1.0, max(fractions))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)
