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
A run that would compile from its first step (on CUDA, or with `compile` true) runs those steps
eagerly and compiles once the dropout is decided: changing it in a compiled model compiles it again.

A budget's run projects from its pace, which two steps time only roughly (the same Xeon as an
AVX2-only CPU projected 8 passes one day and 10 another), so the pace is remembered per machine
and model shape (PACE_FILE) as `dtype` and `compile` auto's answers are: the same command and seed
on the same machine then make the same decision, and the same model, every time. Two steps that
differ by more than NOISY_SPREAD (another program took the cores) decide their run, unremembered.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..model import GPT
from ..runtime.compile_choice import CHECK_STEP, steps_left
from ..runtime.precision import NOISY_SPREAD, read_choices, remember_choices
from .assemble import set_dropout

LONG_RUN_EPOCHS = 10.0  # between the 6 times where it costs and the 20 where it pays
PACE_FILE = "long-run-pace.json"  # in the cache folder: a model shape's first eager steps, per machine


@dataclass
class DropoutCheck:
    """After step CHECK_STEP of a fresh run: the dropout to take from the next step, or None."""

    p: float
    tokens_per_step: int
    train_tokens: int
    max_iters: int | None
    max_seconds: float | None
    key: str | None = None  # the machine and model shape its pace is remembered under; None: not remembered
    epochs: float | None = None  # what the run was projected to see, once decided
    clock: dict[int, float] = field(default_factory=dict)  # the training clock after each of the first steps
    remembered: str | None = None  # the date of the remembered pace it projected from, if it did
    compile_after: bool = False  # a run compiled from its start (CUDA, `compile` true) compiles once this is decided

    def after_step(self, step: int, train_seconds: float) -> float | None:
        if step <= CHECK_STEP:
            self.clock[step] = train_seconds
        if step != CHECK_STEP or self.epochs is not None:
            return None
        # the first step warms up: the pace is that of the steps after it
        pace = self._pace((train_seconds - self.clock.get(1, 0.0)) / (step - 1))
        # all the budget at that pace (the first step's warm-up included), so that a remembered pace
        # projects the same steps every time
        self.epochs = steps_left(self.max_iters, 0, self.max_seconds, pace) * self.tokens_per_step / max(1, self.train_tokens)
        return self.p if self.epochs >= LONG_RUN_EPOCHS else None

    def _pace(self, measured: float) -> float:
        """Seconds a step: remembered for this machine and shape, else the one measured (remembered)."""
        if self.key is None or self.max_seconds is None:  # a run of fixed steps needs no pace
            return measured
        choices = read_choices(PACE_FILE)
        kept = choices.get(self.key)
        if isinstance(kept, dict) and isinstance(kept.get("seconds_a_step"), (int, float)) and kept["seconds_a_step"] > 0:
            self.remembered = str(kept.get("date", "an earlier day"))
            return float(kept["seconds_a_step"])
        times = [self.clock[s] - self.clock[s - 1] for s in range(2, CHECK_STEP + 1)
                 if {s - 1, s} <= self.clock.keys()]
        if len(times) > 1 and min(times) > 0 and max(times) / min(times) <= NOISY_SPREAD:  # else a busy machine
            choices[self.key] = {"seconds_a_step": round(measured, 6), "date": time.strftime("%Y-%m-%d")}
            remember_choices(choices, PACE_FILE)
        return measured


def drop_out_everywhere(model: GPT, p: float) -> None:
    """The model's dropout, the attention weights' included, set to p (its config says so too)."""
    model.config.dropout, model.config.attention_dropout = p, None
    set_dropout(model, p)
