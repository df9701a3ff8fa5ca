"""`long_run_dropout`: as much dropout as the run's length calls for, decided after its first steps.

How much a model should be regularised depends on how often it will see its training text, and
a run with a time budget learns that only once its steps are timed: the same `-s quarter` takes
about 1,500 steps in 15 minutes on an AVX2-only CPU (Tiny Shakespeare seen 6 times) and about
4,900 on a CPU with native bf16 (20 times). Measured there (docs/benchmarks.md): at 6 times,
dropping out the attention weights too only slows learning (1.5013 kept whole against 1.5204 at
the same steps); at 20 times the model over-fits without it (train loss 1.06, whole-split val
1.4808) and dropout 0.15 everywhere, the attention weights included, reaches 1.4573. So a run
with `long_run_dropout` set and projected, after its first CHECK_STEP steps, to see its training
text at least LONG_RUN_EPOCHS times takes that dropout everywhere from the next step; shorter runs
keep the model's own. The model's config is changed with it, so that the folder saved says what
was trained and a resumed run goes on with it (it is decided once, at that step, never again).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model import GPT
from ..runtime.compile_choice import CHECK_STEP, steps_left
from .assemble import set_dropout

LONG_RUN_EPOCHS = 10.0  # between the 6 times where it costs and the 20 where it pays


@dataclass
class DropoutCheck:
    """After step CHECK_STEP of a fresh run: the dropout to take from the next step, or None."""

    p: float
    tokens_per_step: int
    train_tokens: int
    max_iters: int | None
    max_seconds: float | None
    epochs: float | None = None  # what the run was projected to see, once decided
    after_first: float = 0.0  # the clock after the first step, which warms up (not a step's pace)

    def after_step(self, step: int, train_seconds: float) -> float | None:
        if step == 1:
            self.after_first = train_seconds
        if step != CHECK_STEP or self.epochs is not None:
            return None
        pace = (train_seconds - self.after_first) / (step - 1)
        left = steps_left(self.max_iters, step, None if self.max_seconds is None else self.max_seconds - train_seconds,
                          pace)
        self.epochs = (step + left) * self.tokens_per_step / max(1, self.train_tokens)
        return self.p if self.epochs >= LONG_RUN_EPOCHS else None


def drop_out_everywhere(model: GPT, p: float) -> None:
    """The model's dropout, the attention weights' included, set to p (its config says so too)."""
    model.config.dropout, model.config.attention_dropout = p, None
    set_dropout(model, p)
