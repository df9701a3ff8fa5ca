"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, evaluation, progress, stop requests.

A `Trainer` owns everything that changes during training (model, optimiser, step, random
generators) and nothing global, so that two trainers (later: one per rank) never interfere. Its
`TrainState` plus the optimiser moments and RNG states are all it takes to resume *exactly*:
training 2N steps in one go, or N steps, a save, a load and N more, gives the same weights.

Batches come from a generator of their own, and evaluation uses a fresh fixed-seed generator each
time, so saving or evaluating never shifts the random stream that training sees.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .config import ModelConfig, TrainConfig
from .data.corpus import TokenData, get_batch
from .distributed import World
from .distributed.world import is_communication_failure
from .errors import RepytilianError, SettingError
from .evaluate import evaluate
from .events import PROGRESS_SECONDS, Evaluated, Listener, Note, ProgressTracker, note, to_logging
from .model import GPT
from .optim import make_optimizer
from .runtime.cpu import tune_for_training
from .runtime.memory import available_bytes, largest_fitting, training_bytes_per_window
from .runtime.precision import DTYPES, autocast

EVAL_SEED = 2024  # the same evaluation batches every time, so successive estimates compare
# The loss after training covers the whole validation split up to this many tokens: enough for
# a figure to 3 decimals, and minutes rather than hours on a CPU for a corpus of gigabytes. A
# shorter run evaluates on as many tokens as it trained on (at least FINAL_VAL_MIN_TOKENS), for at
# most FINAL_VAL_TIME_SHARE of its training time (at least FINAL_VAL_MIN_SECONDS): `-i quick` "to
# see that it works" must not then wait minutes for a 50k-word softmax over a large split.
FINAL_VAL_MAX_TOKENS = 1_000_000
FINAL_VAL_MIN_TOKENS = 65_536
FINAL_VAL_TIME_SHARE = 0.25
FINAL_VAL_MIN_SECONDS = 10.0


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


class StopRequest:
    """Set by SIGINT/SIGTERM/SIGUSR1 (or by code, e.g. a server) to end training at the next step boundary."""

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s)

    def __init__(self, at_step: int | None = None) -> None:
        self.reason: str | None = None
        self.at_step = at_step  # also stop (as if signalled) once this many steps are done
        self.saving = False
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.saving:
            if signum == signal.SIGINT:  # the impatient second Ctrl+C: give up this save, cleanly
                note("\nCtrl+C again: abandoning the save; earlier saved models are untouched")
                raise KeyboardInterrupt
            note(f"\n{name}: still saving, please wait (Ctrl+C abandons the save)")
            return
        if self.reason is None:
            note(f"\n{name} received: finishing this step, then saving "
                 "(press Ctrl+C again during the save to abandon it)")
        self.request(name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Diverged(RepytilianError):
    """The loss became NaN or infinite: the weights are lost from this step on."""

    def __init__(self, loss: float, step: int, kept: str = ""):
        self.loss, self.step = loss, step
        super().__init__(f"the loss became {loss} at step {step}: training diverged. Try a lower learning rate (--lr) "
                         f"or a smaller model; nothing was saved over your previous model{kept}")


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
        raise SettingError("micro_batch", f"and --grad-accum {cfg.grad_accum} disagree ({cfg.grad_accum} x "
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
               f"{per // micro} micro-batches of {micro} (same result, --micro-batch sets it)")
    return BatchPlan(micro, per // micro, ranks, why)


@dataclass
class EvalResult:
    train_loss: float
    val_loss: float


class Trainer:
    def __init__(self, model: GPT, data: TokenData, cfg: TrainConfig, device: torch.device,
                 state: TrainState | None = None, report: Listener | None = None,
                 world: World | None = None, plan: BatchPlan | None = None):
        self.model = model
        self.world = world or World(device=device)
        self.plan = plan or plan_batches(cfg, model.config, self.world.size, device, cfg.dtype)
        self.data = data
        self.cfg = cfg
        self.device = device
        self.state = state or TrainState(max_iters=cfg.max_iters)
        self.report = report or to_logging  # events.py
        data.check_block_size(model.config.block_size)
        if cfg.dtype not in DTYPES:
            raise ValueError(f"the Trainer computes in a resolved format, not {cfg.dtype!r}: "
                             "settle it first with runtime.precision.resolve_dtype")
        if device.type == "cpu":
            tune_for_training()  # malloc thresholds (a fifth of a small step was page faults), threads
        elif device.type == "cuda":
            # float32 matmuls on tensor cores (TF32) where autocast leaves them in float32: the
            # optimiser's and the loss's, or all of them with --dtype float32
            torch.set_float32_matmul_precision("high")
        self.scaler = torch.amp.GradScaler("cuda") if cfg.dtype == "float16" else None
        compile_it = cfg.compile if cfg.compile is not None else device.type == "cuda"
        self.compiled = self._compiled(model) if compile_it else None
        # DistributedDataParallel (with several processes) around the compiled model, as nanoGPT does
        self.forward = self.world.wrap(self.compiled if self.compiled is not None else model)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._own_dropout_stream()
        # Muon's orthogonalisation in bf16 only where training computes in it (never emulated bf16)
        ns_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or device.type == "cuda" else torch.float32
        self.optimizer = make_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.weight_decay,
                                        (cfg.beta1, cfg.beta2), fused=device.type in ("cuda", "cpu"),
                                        ns_dtype=ns_dtype)

    # --- the state that makes a resume exact: plain data and tensors, for the model folder ---

    def state_dict(self) -> dict[str, Any]:
        """{"state": TrainState as a dict, "param_groups": the optimiser's, "tensors": its moments and
        the random-number states}: all a resume needs, with nothing of this object's classes."""
        sd = self.optimizer.state_dict()
        tensors = {f"optim.{idx}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
                   for idx, pstate in sd["state"].items() for key, value in pstate.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return {"state": self.state.to_dict(), "param_groups": [dict(g) for g in sd["param_groups"]],
                "tensors": tensors}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Put optimiser moments, random-number states and the step counter back, exactly as saved."""
        tensors = payload["tensors"]
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim_state.setdefault(int(idx), {})[name] = value
        try:
            self.optimizer.load_state_dict({"state": optim_state, "param_groups": payload["param_groups"]})
        except (ValueError, KeyError) as e:
            raise RepytilianError(f"the saved optimiser state does not fit this model ({e})") from None
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.batches"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.state = TrainState.from_dict(payload["state"])
        self._own_dropout_stream()

    def _own_dropout_stream(self) -> None:
        """Rank 0 keeps the stream a single process has (a resume of its checkpoint is exact there);
        each other process draws its dropout masks from a stream of its own."""
        if self.world.rank > 0:
            torch.manual_seed(self.cfg.seed + 7919 * self.world.rank + self.state.step)

    def _compiled(self, model: GPT):
        try:
            return torch.compile(model)
        except Exception as e:  # e.g. no compiler on this platform
            self.report(Note(f"warning: torch.compile is not available here ({type(e).__name__}: {e}); "
                             "training eagerly", "warning"))
            return None

    def finished(self) -> bool:
        over_time = self.cfg.max_seconds is not None and self.state.train_seconds >= self.cfg.max_seconds
        return self.state.finished or over_time

    # --- one step ------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        cfg, model = self.cfg, self.model
        lr = learning_rate(self.state.step, cfg, self.state)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Every process draws all the step's windows from the one stream and reads only its share
        # (distributed/world.py says why); its share goes through the model in micro-batches, each
        # one's mean loss divided by their number, so the gradients add up to the whole batch's mean
        # (and DistributedDataParallel averages them over the processes).
        plan, world = self.plan, self.world
        share = cfg.batch_size // world.size
        x, y = get_batch(self.data.train, cfg.batch_size, model.config.block_size, self.generator,
                         slice(world.rank * share, (world.rank + 1) * share))
        pinned = self.device.type == "cuda"
        x, y = (t.pin_memory().to(self.device, non_blocking=True) if pinned else t.to(self.device) for t in (x, y))
        model.train()
        total = torch.zeros((), device=self.device)
        n = plan.accum
        for i, (xs, ys) in enumerate(zip(x.split(plan.micro_batch), y.split(plan.micro_batch))):
            with world.no_sync(self.forward, last=i == n - 1):
                loss = self._loss(xs, ys) / n
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += cfg.batch_size * model.config.block_size
        return total

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.cfg.dtype):
            try:
                _, loss = self.forward(x, y)
            except Exception as e:
                if self.compiled is None or is_communication_failure(e):
                    raise
                # A compiled model fails at its first call if the compiler cannot build it (on
                # every process alike, so each wraps the eager model anew).
                self.report(Note(f"warning: torch.compile failed ({type(e).__name__}); training eagerly", "warning"))
                self.compiled = None
                self.forward = self.world.wrap(self.model)
                _, loss = self.forward(x, y)
        return loss

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def estimate_loss(self) -> EvalResult:
        """Mean loss over `eval_iters` random batches of each split (the same batches every time)."""
        self.model.eval()
        world, micro = self.world, self.plan.micro_batch
        sums = []
        for ids in (self.data.train, self.data.val):
            gen = torch.Generator().manual_seed(EVAL_SEED)
            total = 0.0
            for i in range(self.cfg.eval_iters):
                x, y = get_batch(ids, self.cfg.batch_size, self.model.config.block_size, gen)
                if i % world.size != world.rank:  # with several processes each scores its share
                    continue
                parts = []
                for xs, ys in zip(x.split(micro), y.split(micro)):
                    with autocast(self.device, self.cfg.dtype):
                        _, loss = self.model(xs.to(self.device), ys.to(self.device))
                    parts.append(loss.item())
                total += sum(parts) / len(parts)
            sums.append(total)
        train, val = world.total(sums)
        return EvalResult(train / self.cfg.eval_iters, val / self.cfg.eval_iters)

    def full_val_loss(self, progress: bool = False, model: GPT | None = None) -> float:
        """Mean loss over the validation split in non-overlapping windows of the context: the whole
        split, or, after a short run or on a large corpus, its first `final_val_tokens()` tokens,
        and never more than a share of the training time (`final_val_scope` says what it covered)."""
        with autocast(self.device, self.cfg.dtype):
            block = self.model.config.block_size
            ids = self.data.val[: self.final_val_tokens() + 1]
            seconds = max(FINAL_VAL_MIN_SECONDS, FINAL_VAL_TIME_SHARE * self.state.train_seconds)
            report = evaluate(model or self.model, ids, stride=block, batch_size=self.plan.micro_batch,
                              progress=progress,
                              max_seconds=seconds, desc="final val loss")
        self.final_val_scored = report.tokens
        return report.loss

    def final_val_tokens(self) -> int:
        """The evaluation after training is proportional to the run: at least FINAL_VAL_MIN_TOKENS, as
        many as training saw, at most FINAL_VAL_MAX_TOKENS (a corpus of gigabytes has plenty)."""
        return min(FINAL_VAL_MAX_TOKENS, max(FINAL_VAL_MIN_TOKENS, self.state.tokens_seen))

    def final_val_scope(self) -> str:
        """What full_val_loss covered, in words."""
        whole = max(len(self.data.val) - 1, 0)
        scored = getattr(self, "final_val_scored", None)
        if scored is None:
            scored = min(whole, self.final_val_tokens())
        if scored >= whole:
            return "the whole validation split"
        # `scored` predictions read scored + 1 tokens: counted as the split's tokens are at the start
        return f"the first {scored + 1:,} of the validation split's {len(self.data.val):,} tokens"

    # --- the loop ------------------------------------------------------------------------

    def record(self, result: EvalResult, lr: float) -> dict[str, Any]:
        entry = {
            "step": self.state.step,
            "tokens": self.state.tokens_seen,
            "train_loss": round(result.train_loss, 5),
            "val_loss": round(result.val_loss, 5),
            "lr": lr,
            "time": round(self.state.train_seconds, 2),
        }
        self.state.metrics.append(entry)
        if self.state.best_val_loss is None or result.val_loss < self.state.best_val_loss:
            self.state.best_val_loss = result.val_loss
        return entry

    def run(self, stop: StopRequest | None = None, progress: bool = True,
            report: Listener | None = None, after_step: Callable[[], None] | None = None,
            on_eval: Callable[[dict[str, Any]], None] | None = None) -> str | None:
        """Train until the schedule ends or a stop is requested; returns the stop reason or None.
        Evaluations and what to expect are reported as events (events.py)."""
        stop = stop or StopRequest()
        state, cfg = self.state, self.cfg
        report = report or self.report
        tracker = ProgressTracker("training", "step", state.max_iters, state.step, enabled=progress, report=report)
        refresh = PROGRESS_SECONDS  # how often the loss is read (a host sync) and progress reported
        tokens_per_step = cfg.batch_size * self.model.config.block_size
        last_update, steps_since = time.perf_counter(), 0
        first_step_done: tuple[int, float] | None = None  # (step, train_seconds) after this run's first
        announced = False
        world = self.world
        agreed: str | None = None  # with several processes: the stop they all agreed on
        try:
            while not self.finished():
                if not world.distributed and stop.reason is not None:
                    break
                if stop.at_step is not None and state.step >= stop.at_step:
                    stop.request("request")
                    agreed = stop.reason
                    break
                t0 = time.perf_counter()
                loss = self.train_step()
                seconds = time.perf_counter() - t0
                loss_value = None
                if world.distributed:
                    # One small all-reduce a step: the processes stop at the same step (a signal may
                    # reach one of them), and their clocks agree for the time budget and schedule.
                    wants, seconds, loss_value = world.agree_step(stop.reason is not None, seconds, loss)
                    if wants:
                        agreed = stop.reason or ("torchrun's exit" if world.orphaned() else "another process's stop")
                state.train_seconds += seconds
                steps_since += 1
                if first_step_done is None:  # the first step warms up (allocations, kernels): not timed
                    first_step_done = (state.step, state.train_seconds)
                elif not announced:
                    steps, seconds = state.step - first_step_done[0], state.train_seconds - first_step_done[1]
                    if steps >= 2 and seconds >= EXPECT_AFTER_SECONDS:
                        announced = True
                        note = expectation(steps, seconds, tokens_per_step, state, cfg)
                        if note:
                            report(Note(note))
                now = time.perf_counter()
                done = self.finished()
                if loss_value is not None or now - last_update >= refresh or done:
                    if loss_value is None:
                        loss_value = loss.item()  # a host sync only when the bar is refreshed
                    if not math.isfinite(loss_value):
                        raise Diverged(loss_value, state.step)
                if now - last_update >= refresh or done:
                    rate = steps_since * tokens_per_step / (now - last_update)
                    budget = ("" if cfg.max_seconds is None
                              else f", {max(0.0, cfg.max_seconds - state.train_seconds):.0f} s of the budget left")
                    tracker.details = f"loss {loss_value:.4f}, {rate:,.0f} tok/s{budget}"
                    tracker.update(steps_since, force=True)
                    last_update, steps_since = now, 0
                if state.step % cfg.eval_interval == 0 or done:
                    t0 = time.perf_counter()
                    result = self.estimate_loss()
                    if not (math.isfinite(result.train_loss) and math.isfinite(result.val_loss)):
                        raise Diverged(result.train_loss if not math.isfinite(result.train_loss) else result.val_loss,
                                       state.step)
                    entry = self.record(result, learning_rate(state.step - 1, cfg, state))
                    if on_eval is not None:
                        on_eval(entry)  # e.g. experiment trackers, the live metrics (before anyone is told)
                    report(Evaluated(**entry))
                    last_update += time.perf_counter() - t0  # evaluation time is not training speed
                if after_step is not None:
                    t0 = time.perf_counter()
                    after_step()  # e.g. a periodic checkpoint
                    last_update += time.perf_counter() - t0
                if agreed is not None:
                    break
        except Exception as e:
            if world.distributed and is_communication_failure(e) and not isinstance(e, RepytilianError):
                raise world.lost(e, state.step) from None
            raise
        finally:
            tracker.update(steps_since)
            tracker.close()
        return agreed if world.distributed else stop.reason


EXPECT_AFTER_SECONDS = 5.0  # steps timed before a long run says how long it will take
EXPECT_FROM_SECONDS = 120.0  # runs expected to take longer than this say so


def expectation(steps: int, seconds: float, tokens_per_step: int, state: TrainState,
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


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; or exactly the device asked for."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RepytilianError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", "cuda was asked for, but this PyTorch sees no CUDA GPU; use cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SettingError("device", "mps was asked for, but MPS is not available here; use cpu")
    return device

