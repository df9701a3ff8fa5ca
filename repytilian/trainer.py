"""The training loop: AdamW, warm-up + cosine LR, gradient clipping, evaluation, progress, stop requests.

A `Trainer` owns everything that changes during training (model, optimiser, step, random
generators) and nothing global, so that two trainers (later: one per rank) never interfere. Its
`TrainState` plus the optimiser moments and RNG states are all it takes to resume *exactly*:
training 2N steps in one go, or N steps, a save, a load and N more, gives the same weights.

Batches come from a generator of their own, and evaluation takes the same evenly spaced windows
each time, so saving or evaluating never shifts the random stream that training sees.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainConfig
from .data.corpus import TokenData, estimate_batches, get_batch
from .distributed import World
from .distributed.world import is_communication_failure
from .errors import RepytilianError
from .evaluate import final_val_loss, final_val_scope
from .events import (
    PROGRESS_SECONDS,
    Evaluated,
    Listener,
    Note,
    ProgressTracker,
    to_logging,
)
from .model import GPT
from .optim import clip_and_step, make_optimizer
from .runtime.batches import BatchPlan, plan_batches
from .runtime.device import prepare_for_training, training_compile_mode, wait_for
from .runtime.eta import EXPECT_AFTER_SECONDS, expectation
from .runtime.precision import DTYPES, autocast
from .runtime.signals import StopRequest
from .schedule import TrainState, learning_rate

EVAL_SEED = 2024  # the same conversations in every estimate of a chat fine-tune, so successive ones compare


class Diverged(RepytilianError):
    """The loss became NaN or infinite: the weights are lost from this step on."""

    def __init__(self, loss: float, step: int, kept: str = ""):
        self.loss, self.step = loss, step
        super().__init__(f"the loss became {loss} at step {step}: training diverged. Try a lower `learning_rate` "
                         f"or a smaller model; nothing was saved over your previous model{kept}", ("learning_rate",))


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
        prepare_for_training(device)
        self.install_native_dropout()  # before any step is timed: its first build takes under a second
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

    def install_native_dropout(self) -> None:
        """On a CPU, dropout through runtime/fused_attention.c's kernels where the model has any (in
        bf16, the attention's way timed at this run's shape)."""
        c = self.model.config
        if self.device.type == "cpu" and (c.attention_p > 0 or c.dropout > 0):  # loaded where used
            from .runtime import fused_attention

            fused_attention.install(bf16_at=(self.plan.micro_batch, c.n_head, c.block_size, c.n_embd // c.n_head)
                                    if self.cfg.dtype == "bfloat16" and c.attention_p > 0 else None)

    def compile_from_now(self) -> None:
        """The rest of the run trains through torch.compile (`compile` auto measured that it pays)."""
        self.cfg.compile = True
        self.compiled = self._compiled(self.model)
        if self.compiled is not None:
            self.forward = self.world.wrap(self.compiled)

    def eager_from_now(self) -> None:
        """The rest of the run trains the model uncompiled (a compile that failed, or one put off)."""
        self.compiled, self.forward = None, self.world.wrap(self.model)

    def _compiled(self, model: GPT):
        try:
            return torch.compile(model, mode=training_compile_mode(self.device, self.world.size, self.plan.accum))
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
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            clip_and_step(self.optimizer, model.parameters(), cfg.grad_clip)
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
                # A compiled model fails at its first call if it cannot be built (on every process alike)
                self.report(Note(f"warning: torch.compile failed ({type(e).__name__}); training eagerly", "warning"))
                self.eager_from_now()
                _, loss = self.forward(x, y)
        return loss

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def estimate_loss(self) -> EvalResult:
        """Mean loss over `eval_iters` batches of each split, the same every time (estimate_batches)."""
        self.model.eval()
        world, micro = self.world, self.plan.micro_batch
        sums = []
        for ids in (self.data.train, self.data.val):
            total = 0.0
            batches = estimate_batches(ids, self.cfg.eval_iters, self.cfg.batch_size, self.model.config.block_size,
                                       EVAL_SEED)
            for i, (x, y) in enumerate(batches):
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
        """Mean loss over the validation split (evaluate.final_val_loss: the whole split, or after a
        short run or on a large corpus its first tokens; `final_val_scope` says what it covered)."""
        with autocast(self.device, self.cfg.dtype):
            report = final_val_loss(model or self.model, self.data.val, self.state.tokens_seen,
                                    self.state.train_seconds, self.plan.micro_batch, progress)
        self.final_val_scored, self.final_val_words = report.tokens, report.scope
        return report.loss

    def final_val_scope(self) -> str:
        """What full_val_loss covered, in words."""
        if getattr(self, "final_val_words", ""):
            return self.final_val_words
        return final_val_scope(len(self.data.val), self.state.tokens_seen, getattr(self, "final_val_scored", None))

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
        Evaluations, progress and what to expect are reported as events (events.py)."""
        stop = stop or StopRequest()
        state, world = self.state, self.world
        pace = _Pace(self, report or self.report, progress)
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
                seconds, loss_value = time.perf_counter() - t0, None
                if world.distributed:
                    # One small all-reduce a step: the processes stop at the same step (a signal may
                    # reach one of them), and their clocks agree for the time budget and schedule.
                    wants, seconds, loss_value = world.agree_step(stop.reason is not None, seconds, loss)
                    if wants:
                        agreed = stop.reason or ("torchrun's exit" if world.orphaned() else "another process's stop")
                state.train_seconds += seconds
                pace.stepped(loss, loss_value, self.finished(), seconds)
                if state.step % self.cfg.eval_interval == 0 or self.finished():
                    state.train_seconds += wait_for(self.device)
                    with pace.paused():
                        self._evaluate_and_tell(pace.report, on_eval)
                if after_step is not None:
                    with pace.paused():
                        after_step()  # e.g. a periodic checkpoint
                if agreed is not None:
                    break
            state.train_seconds += wait_for(self.device)
        except Exception as e:
            if world.distributed and is_communication_failure(e) and not isinstance(e, RepytilianError):
                raise world.lost(e, state.step) from None
            raise
        finally:
            pace.close()
        return agreed if world.distributed else stop.reason

    def _evaluate_and_tell(self, report: Listener, on_eval: Callable[[dict[str, Any]], None] | None) -> None:
        result = self.estimate_loss()
        if not (math.isfinite(result.train_loss) and math.isfinite(result.val_loss)):
            raise Diverged(result.train_loss if not math.isfinite(result.train_loss) else result.val_loss,
                           self.state.step)
        entry = self.record(result, learning_rate(self.state.step - 1, self.cfg, self.state))
        if on_eval is not None:
            on_eval(entry)  # e.g. experiment trackers, the live metrics (before anyone is told)
        report(Evaluated(**entry))


class _Pace:
    """The loop's clock: tokens/s, the loss read when progress is due (a host sync), divergence
    caught there, the time a long run will take (after its first timed steps), Progress events."""

    def __init__(self, trainer: Trainer, report: Listener, progress: bool):
        self.trainer, self.report = trainer, report
        state = trainer.state
        self.tracker = ProgressTracker("training", "step", state.max_iters, state.step, enabled=progress,
                                       report=report)
        self.tokens_per_step = trainer.cfg.batch_size * trainer.model.config.block_size
        self.last_update, self.steps_since = time.perf_counter(), 0
        # The steps timed for what to expect, and their seconds: the steps' own, not the budget's
        # (which also counts what `compile` auto spends measuring and compiling). The first step,
        # which warms up (allocations, kernels), is not timed: hence -1.
        self.timed_steps, self.timed_seconds = -1, 0.0
        self.announced = False
        self.forward = trainer.forward  # a new one (compiled mid-run) warms up again: its first step builds it

    def stepped(self, loss: torch.Tensor, loss_value: float | None, done: bool, seconds: float) -> None:
        state, cfg = self.trainer.state, self.trainer.cfg
        self.steps_since += 1
        self._maybe_announce(seconds)
        now = time.perf_counter()
        due = now - self.last_update >= PROGRESS_SECONDS or done
        if loss_value is not None or due:
            if loss_value is None:
                state.train_seconds += wait_for(self.trainer.device)  # the GPU's queued work: this step's time
                loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise Diverged(loss_value, state.step)
        if due:
            rate = self.steps_since * self.tokens_per_step / (now - self.last_update)
            budget = ("" if cfg.max_seconds is None
                      else f", {max(0.0, cfg.max_seconds - state.train_seconds):.0f} s of the budget left")
            self.tracker.details = f"loss {loss_value:.4f}, {rate:,.0f} tok/s{budget}"
            self.tracker.update(self.steps_since, force=True)
            self.last_update, self.steps_since = now, 0

    def _maybe_announce(self, seconds: float) -> None:
        if self.announced:
            return
        if self.trainer.forward is not self.forward:
            self.forward = self.trainer.forward
            self.timed_steps, self.timed_seconds = -1, 0.0
        self.timed_steps += 1
        if self.timed_steps == 0:
            return
        self.timed_seconds += seconds
        if self.timed_steps >= 2 and self.timed_seconds >= EXPECT_AFTER_SECONDS:
            self.announced = True
            said = expectation(self.timed_steps, self.timed_seconds, self.tokens_per_step, self.trainer.state,
                               self.trainer.cfg)
            if said:
                self.report(Note(said))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block (evaluations, checkpoints) is not training speed."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last_update += time.perf_counter() - t0

    def close(self) -> None:
        self.tracker.update(self.steps_since)
        self.tracker.close()
