"""Whether a CPU training run is compiled (`compile` auto): measured at start where the run is long
enough to repay a compile, and remembered per machine and model shape.

On a CPU torch.compile is a bet: it fuses the small elementwise operations around the matrix
products (norms, activations, rotary positions, dropout), which pays for some shapes and not for
others (measured on a 2-core AVX2 EPYC, float32: the shipped `v3c` shape 451 against 514 ms a
step, 1.14x, after 17 s of compiling; the `tiny` and `default` shapes 0.98x and 0.99x), and its
compile costs tens of seconds, which a short run never earns back. So a run that is projected to
last at least MIN_RUN_SECONDS times a few steps each way, compiling once, and keeps the compiled
model where it is at least MIN_GAIN faster and what it saves over the rest of the run exceeds the
compile's own time. Shorter runs train eagerly without measuring. The answer is remembered with
its figures (`$REPYTILIAN_HOME/compile-choices.json`), so the same seed on the same machine trains
the same model every time (compiled and eager steps round differently); a measurement whose
repeats disagree (a busy machine) decides its run but is not remembered.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import GPT
from .paths import cache_dir
from .precision import (
    NOISY_SPREAD,
    autocast,
    choice_key,
    read_choices,
    remember_choices,
)

MIN_RUN_SECONDS = 600.0  # a projected run shorter than this trains eagerly, unmeasured
MIN_GAIN = 1.05  # compiled steps must be this much faster (and repay the compile within the run)
ROUNDS = 3  # timed steps each way, in turn
CHOICES_FILE = "compile-choices.json"


@dataclass
class CompileChoice:
    compile: bool
    figures: dict  # eager / compiled seconds a step, compile seconds, steps left, spread, date
    remembered: bool

    def words(self) -> str:
        f = self.figures
        when = f"measured here on {f['date']}" if self.remembered else "measured just now"
        kept = (f"its repeats differed {f['spread']:.1f}x (a busy machine), so it is not remembered"
                if f["spread"] > NOISY_SPREAD else f"remembered in {cache_dir() / CHOICES_FILE}")
        return (f"torch.compile {'on' if self.compile else 'off'} (`compile` auto, {when}: a step took "
                f"{1000 * f['eager']:.0f} ms eager and {1000 * f['compiled']:.0f} ms compiled, "
                f"{f['eager'] / f['compiled']:.2f}x, after {f['compile_seconds']:.0f} s of compiling; compiled needs "
                f"{MIN_GAIN:g}x and to save more than its compile over the ~{f['steps_left']:,} steps left; "
                f"{kept}; `compile` true or false decides)")


def pays(eager: float, compiled: float, compile_seconds: float, steps_left: int) -> bool:
    """Whether compiled steps are worth it: faster by MIN_GAIN, and saving more than the compile cost."""
    return eager >= MIN_GAIN * compiled and (eager - compiled) * steps_left > compile_seconds


def steps_left(max_iters: int | None, step: int, max_seconds: float | None, seconds_a_step: float) -> int:
    """About how many steps the run has ahead of it (a budget's, at `seconds_a_step`)."""
    by_steps = max_iters - step if max_iters is not None else None
    by_time = int(max_seconds / seconds_a_step) if max_seconds is not None else None
    known = [n for n in (by_steps, by_time) if n is not None]
    return max(0, min(known)) if known else 10 ** 9  # endless: until stopped


def choose_compile(model: GPT, device: torch.device, dtype: str, batch: torch.Tensor, accum: int,
                   seconds_a_step: float, left: int, compile_fn: Callable[[GPT], Callable] = torch.compile,
                   before: Callable[[], None] = lambda: None) -> CompileChoice | None:
    """Compiled or eager for the rest of a run whose steps take `seconds_a_step` eagerly and that has
    `left` steps to go; None where that is too short to measure (it stays eager).

    `batch` is one micro-batch of token ids; a step is `accum` of them. Measuring leaves the model,
    its gradients and the random stream as they were; `before` is called when a measurement starts."""
    if left * seconds_a_step < MIN_RUN_SECONDS:
        return None
    key, choices = step_key(model, dtype, batch.size(0), accum), read_choices(CHOICES_FILE)
    kept = choices.get(key)
    if isinstance(kept, dict) and all(isinstance(kept.get(k), (int, float)) for k in ("eager", "compiled", "compile_seconds")):
        # the machine's figures, weighed for this run's length
        on = pays(kept["eager"], kept["compiled"], kept["compile_seconds"], left)
        return CompileChoice(on, {**kept, "steps_left": left}, remembered=True)
    before()
    f = _Timing(model, device, dtype, batch, accum).both(compile_fn)
    figures = {**f, "steps_left": left, "date": time.strftime("%Y-%m-%d")}
    figures["compile"] = pays(f["eager"], f["compiled"], f["compile_seconds"], left)
    if f["spread"] <= NOISY_SPREAD:
        choices[key] = {k: v for k, v in figures.items() if k != "steps_left"}
        remember_choices(choices, CHOICES_FILE)
    return CompileChoice(figures["compile"], figures, remembered=False)


class CompileCheck:
    """Decides `compile` auto for a CPU run once it has taken CHECK_STEP steps (a fixed step, so that
    a run that remembers the answer switches where the run that measured it did: the same seed
    gives the same model). `after_step` returns the choice once, or None (nothing to decide)."""

    def __init__(self, model: GPT, device: torch.device, dtype: str, micro_batch: int, accum: int,
                 max_iters: int | None, max_seconds: float | None,
                 compile_fn: Callable[[GPT], Callable] | None = None):
        self.model, self.device, self.dtype, self.accum = model, device, dtype, accum
        self.max_iters, self.max_seconds, self.compile_fn = max_iters, max_seconds, compile_fn
        self.micro_batch = micro_batch
        self.done = False
        self.seconds = 0.0  # what measuring took (the run's clock counts it)

    def after_step(self, step: int, train_seconds: float,
                   before: Callable[[], None] = lambda: None) -> CompileChoice | None:
        if self.done or step < CHECK_STEP:
            return None
        self.done = True
        seconds_a_step = train_seconds / max(1, step)
        budget_left = None if self.max_seconds is None else self.max_seconds - train_seconds
        left = steps_left(self.max_iters, step, budget_left, seconds_a_step)
        ids = torch.Generator().manual_seed(0)  # token ids to time with, not from the run's stream
        batch = torch.randint(self.model.config.vocab_size, (self.micro_batch, self.model.config.block_size),
                              generator=ids)
        t0 = time.perf_counter()
        choice = choose_compile(self.model, self.device, self.dtype, batch.to(self.device), self.accum,
                                seconds_a_step, left, self.compile_fn or torch.compile, before)
        self.seconds = 0.0 if choice is None or choice.remembered else time.perf_counter() - t0
        return choice


CHECK_STEP = 3  # the step after which a run's length is projected and `compile` auto decided


class _Timing:
    """Forward+backward steps of the training batch, timed without changing what training sees."""

    def __init__(self, model: GPT, device: torch.device, dtype: str, batch: torch.Tensor, accum: int):
        self.model, self.device, self.dtype, self.batch, self.accum = model, device, dtype, batch, accum

    def _step(self, forward: Callable) -> float:
        t0 = time.perf_counter()
        with autocast(self.device, self.dtype):
            _, loss = forward(self.batch, self.batch)
        loss.backward()
        return (time.perf_counter() - t0) * self.accum

    def _untouched(self, measure: Callable[[], dict]) -> dict:
        # in training mode, as the run computes (a compiled graph is made for it once, and reused)
        state, was_training = torch.get_rng_state(), self.model.training
        self.model.train()
        try:
            return measure()
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.train(was_training)
            torch.set_rng_state(state)

    def both(self, compile_fn: Callable[[GPT], Callable]) -> dict:
        def measure() -> dict:
            compiled = compile_fn(self.model)
            first = self._step(compiled) / self.accum  # the compile, and one micro-batch
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for round_ in range(ROUNDS):  # in turn, so that a busy spell slows both alike
                for name in ("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager"):
                    times[name].append(self._step(self.model if name == "eager" else compiled))
            best = {name: min(t) for name, t in times.items()}
            spread = max(statistics.median(t) / min(t) for t in times.values())
            return {**best, "compile_seconds": round(max(0.0, first - best["compiled"] / self.accum), 1),
                    "spread": round(spread, 3)}
        return self._untouched(measure)


def step_key(model: GPT, dtype: str, micro_batch: int, accum: int) -> str:
    """What a remembered timing of a training step holds for: the machine, the model's shape, the
    number format and the micro-batches of a step."""
    return f"{choice_key(model, micro_batch)} {dtype} x{accum}"
