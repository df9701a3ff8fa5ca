"""How long a run will take, from its first timed steps (for runs long enough to be worth saying)."""
from __future__ import annotations

import time
from typing import Any

from ..config import TrainConfig

EXPECT_AFTER_SECONDS = 5.0  # steps timed before a long run says how long it will take
EXPECT_FROM_SECONDS = 120.0  # runs expected to take longer than this say so


def expectation(steps: int, seconds: float, tokens_per_step: int, state: Any,
                cfg: TrainConfig) -> str | None:
    """What a long run should expect, from its first timed steps; None for short or endless runs."""
    per_step = seconds / steps
    left = []
    if state.max_iters is not None:
        left.append(per_step * (state.max_iters - state.step))
    if cfg.max_seconds is not None:
        left.append(cfg.max_seconds - state.train_seconds)
    if not left or min(left) < EXPECT_FROM_SECONDS:
        return None
    remaining = min(left)
    finish = time.strftime("%a %H:%M" if remaining > 12 * 3600 else "%H:%M", time.localtime(time.time() + remaining))
    what = (f"the remaining {state.max_iters - state.step:,} steps" if state.max_iters is not None
            and remaining == left[0] else "the time budget")
    return (f"measured {tokens_per_step * steps / seconds:,.0f} tokens/s ({per_step:.2f} s a step) over the "
            f"first steps: {what} will take about {_duration(remaining)} of training, plus evaluations "
            f"(until about {finish})")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
