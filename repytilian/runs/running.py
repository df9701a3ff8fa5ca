"""Running a run: the processes, the number format, the Trainer, the loop with its trackers, live
metrics and stop requests, and the save at the end (what is kept is keep.py's)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import World
from ..errors import RepytilianError
from ..evaluate import val_bits_per_byte
from ..events import (
    Finished,
    Listener,
    Note,
    NothingSaved,
    Prepared,
    Saved,
    Started,
    Stopped,
    notes_to,
)
from ..interop.trackers import finish_all, log_all, open_trackers
from ..language_model import LanguageModel
from ..lora import add_lora, has_lora, merge_lora
from ..model import GPT
from ..runtime.compile_choice import CompileCheck, step_key
from ..runtime.device import pick_device, prepare_for_training
from ..runtime.precision import DTYPES, DtypeRecheck, resolve_dtype
from ..store.folder import (
    interrupted_dir,
    save_model_dir,
)
from ..store.live import LiveMetrics
from ..store.lock import TargetLock
from ..trainer import (
    Diverged,
    StopRequest,
    Trainer,
    plan_batches,
)
from .assemble import (
    Run,
    fingerprint,
    fit_warmup,
    fresh_run,
    plan_schedule,
    resumed_run,
)
from .keep import (
    Best,
    Checkpointer,
    OverfitWatch,
    keep_the_last_good,
    report_data_size,
    run_summary,
    save_finished,
)
from .long_run import LONG_RUN_EPOCHS, DropoutCheck, drop_out_everywhere
from .options import TrainOptions, TrainResult


def run_training(opts: TrainOptions, report: Listener) -> TrainResult:
    world = World.from_env()  # under torchrun: this process's rank among the others
    device = world.place(pick_device(opts.device))
    if not world.is_main:
        report = _quiet  # rank 0 speaks for all; errors still reach each process's stderr
        opts = dataclasses.replace(opts, progress=False)
    prepare_for_training(device)  # before any timing: the threads the measurement and the training use
    world.start(device)
    try:
        with notes_to(report):
            return _train_in(opts, report, world, device)
    finally:
        world.close()


def _quiet(event: Any) -> None:
    pass


def _train_in(opts: TrainOptions, report: Listener, world: World, device: torch.device) -> TrainResult:
    out = Path(opts.out) if opts.out else None
    opts.check_start(world.is_main)
    run = resumed_run(opts, device, report) if opts.load else fresh_run(opts, device, report)
    if opts.lora:
        with_adapters(opts, run, report)
    run.data.check_block_size(run.mcfg.block_size)  # before anything runs the model at that length
    world.same_everywhere(fingerprint(run), "data or tokenizers")
    # The number format is settled before the trainer exists (and stored: a resume computes the same);
    # with several processes rank 0 measures (when auto asks for it) and the others take its choice.
    auto = run.tcfg.dtype == "auto"
    if world.is_main or not auto:
        run.tcfg.dtype = resolve_dtype(run.tcfg.dtype, device, run.model, run.tcfg.micro_batch or run.tcfg.batch_size,
                                       warn=lambda text: report(Note(text, "warning", ("dtype",))),
                                       tell=lambda text: report(Note(text, settings=("dtype", "measure_dtype"))), remeasure=opts.measure_dtype)
    run.tcfg.dtype = world.from_main(run.tcfg.dtype if run.tcfg.dtype in DTYPES else "float32", tuple(DTYPES))
    plan = plan_batches(run.tcfg, run.mcfg, world.size, device, run.tcfg.dtype)
    if plan.why:
        report(Note(plan.why, settings=("micro_batch",)))
    trainer = Trainer(run.model, run.data, run.tcfg, device, report=report, world=world, plan=plan)
    if run.loaded is not None and run.loaded.trainer is None:
        why = ": it was saved without optimiser state (imported or shipped)"
        if run.source.kind == "chat" and "chat" not in run.loaded.meta:
            why = " to chat: its vocabulary grew by the chat tokens"
        elif run.loaded.meta.get("grown"):
            why = ": its vocabulary grew by the text's new tokens"
        report(Note(f"fine-tuning {opts.load}{why}, so its weights start a new run of "
                    f"{run.tcfg.max_iters or 'endless'} steps with a fresh optimiser, peak learning rate "
                    f"{run.tcfg.learning_rate:g} (`learning_rate` sets it)", settings=("learning_rate",)))
    elif run.loaded is not None:
        trainer.load_state_dict(run.loaded.trainer)
        asked = opts.iterations is not None or "max_iters" in opts.overrides
        trainer.state = plan_schedule(trainer.state, run.tcfg.max_iters, asked, report)
        if trainer.state.schedule_start == trainer.state.step:  # a new schedule: its warm-up fits its steps
            fit_warmup(run.tcfg, opts)
    recheck = None
    if auto and not world.distributed and trainer.compiled is None:
        recheck = DtypeRecheck(run.model, device, run.tcfg.micro_batch or run.tcfg.batch_size, run.tcfg.dtype)
    check = None
    if run.tcfg.compile is None and device.type == "cpu" and not world.distributed:
        check = CompileCheck(run.model, device, run.tcfg.dtype, plan.micro_batch, plan.accum, run.tcfg.max_iters,
                             run.tcfg.max_seconds)
    longer = None
    chosen = {"dropout", "attention_dropout"} & set(opts.overrides)  # a dropout asked for is the run's throughout
    if run.tcfg.long_run_dropout is not None and run.loaded is None and not world.distributed and not chosen:
        c = run.mcfg
        pace_key = (f"{step_key(run.model, run.tcfg.dtype, plan.micro_batch, plan.accum)} "
                    f"dropout {c.dropout:g}/{c.attention_p:g} {run.tcfg.optimizer}")
        longer = DropoutCheck(run.tcfg.long_run_dropout, run.tcfg.batch_size * run.mcfg.block_size,
                              len(run.data.train), run.tcfg.max_iters, run.tcfg.max_seconds, pace_key)
        if trainer.compiled is not None:
            # Compiled from the start (CUDA's default, or `compile` true): a dropout changed after the
            # first steps would compile the model a second time (tens of seconds of the budget, and a
            # first-steps estimate that took the compile for a step), so those steps run eagerly
            trainer.eager_from_now()
            longer.compile_after = True
    return _run_and_save(opts, run, trainer, device, out, report, _Checks(recheck, check, longer))


def with_adapters(opts: TrainOptions, run: Run, report: Listener) -> None:
    """`lora`: the loaded model's matrices frozen, each with a low-rank adapter (lora.py), trained by
    AdamW (Muon orthogonalises whole matrices, which a rank-r adapter is not)."""
    total = sum(p.numel() for p in run.model.parameters())
    # New tokens (a chat's, or a text's new characters or words) must be learned: the embeddings train too
    new_tokens = run.source.kind == "chat" or bool(run.loaded is not None and run.loaded.meta.get("grown"))
    trained = add_lora(run.model, opts.lora, embeddings=new_tokens)
    run.lora = opts.lora
    run.tcfg.optimizer = "adamw"
    if "learning_rate" not in opts.overrides:
        # Adapters start at zero and move the model through few directions: ten times a full
        # fine-tune's rate (measured on a tiny chat fine-tune: its persona learned in 200 steps at
        # 10x, not at 1x)
        run.tcfg.learning_rate, run.tcfg.min_lr = run.tcfg.learning_rate * 10, run.tcfg.min_lr * 10
    report(Note(f"LoRA of rank {opts.lora}: training {trained:,} of {total:,} parameters (adapters on every "
                f"block's matrices{', and the token embeddings' if new_tokens else ''}), with AdamW; the folder saved "
                "holds the merged weights"))


@dataclass
class _Checks:
    """What a run decides after its first steps: the number format again, its dropout (before
    anything is compiled), `compile` auto."""

    dtype: DtypeRecheck | None = None
    compile: CompileCheck | None = None
    dropout: DropoutCheck | None = None

    def after_step(self, trainer: Trainer, report: Listener) -> None:
        _check_dropout(self.dropout, trainer, report)
        _check_compile(self, trainer, report)
        _recheck_dtype(self.dtype, trainer, report)


def _check_dropout(check: DropoutCheck | None, trainer: Trainer, report: Listener) -> None:
    """`long_run_dropout`, once the run's length is projected (runs/long_run.py)."""
    if check is None or check.epochs is not None:
        return
    p = check.after_step(trainer.state.step, trainer.state.train_seconds)
    if check.epochs is None:
        return
    seen = f"this run is projected to see its training text about {check.epochs:.0f} times"
    if check.remembered:
        seen += f" (at this machine's pace for this model, remembered on {check.remembered})"
    if p is None:
        report(Note(f"{seen}: the model's dropout throughout (`long_run_dropout` takes over from "
                    f"{LONG_RUN_EPOCHS:g} times)", settings=("long_run_dropout",)))
    else:
        drop_out_everywhere(trainer.model, p)
        trainer.install_native_dropout()
        report(Note(f"{seen}, so it regularises more: dropout {p:g} everywhere, the attention weights included, "
                    f"from step {trainer.state.step + 1} (`long_run_dropout`)", settings=("long_run_dropout",)))
    if check.compile_after:
        trainer.compile_from_now()


def _check_compile(checks: _Checks, trainer: Trainer, report: Listener) -> None:
    """`compile` auto on a CPU, once the run's length is known (runtime/compile_choice.py): measured or
    remembered; what measuring and compiling took counts against a time budget."""
    check = checks.compile
    if check is None or check.done:
        return
    state = trainer.state
    choice = check.after_step(state.step, state.train_seconds, before=lambda: report(Note(
        "this run is long enough for torch.compile to pay on this CPU, if it is faster here: timing eager and "
        "compiled steps, compiling once (tens of seconds; the answer is remembered for this machine and shape)",
        settings=("compile",))))
    if choice is None:
        return
    state.train_seconds += check.seconds
    trainer.cfg.compile = choice.compile
    if choice.compile:
        trainer.compile_from_now()
        if checks.dtype is not None:  # compiled steps are faster than the number format's measurement
            checks.dtype.done = True
    report(Note(f"{choice.words()}; from step {state.step + 1}", settings=("compile",)))


def _recheck_dtype(recheck: DtypeRecheck | None, trainer: Trainer, report: Listener) -> None:
    """After a few steps: where they ran faster than the remembered measurement of the number format
    allows, that measurement was taken on a busy machine; measured again, a different answer is used
    from the next step on (and remembered)."""
    if recheck is None or recheck.done:
        return
    state = trainer.state
    choice = recheck.after_step(state.step, state.train_seconds, trainer.cfg.batch_size * trainer.model.config.block_size)
    if choice is None:
        return
    f = choice.figures
    said = (f"the remembered choice of {recheck.dtype} was measured on a busy machine (this run takes "
            f"{f['run_ms_per_token']:.4f} ms a token, faster than that measurement's {f['kept_ms_per_token']:.4f}); "
            f"measured again: {choice.words()}")
    if choice.dtype != trainer.cfg.dtype:
        trainer.cfg.dtype = choice.dtype
        said += f"; training continues in {choice.dtype} from step {state.step + 1}"
    report(Note(said))




def _announce(opts: TrainOptions, run: Run, trainer: Trainer, device: torch.device, out: Path | None,
              report: Listener) -> str:
    """What will be trained on what, and how long: the events before the loop; the steps in words."""
    model, tokenizer, data, mcfg, tcfg = run.model, run.tokenizer, run.data, run.mcfg, run.tcfg
    report(Prepared(run.source.describe(), data.chars, tokenizer.name, tokenizer.vocab_size, len(data.train),
                    len(data.val), mcfg.n_layer, mcfg.n_head, mcfg.n_embd, mcfg.block_size, model.num_params(),
                    tcfg.batch_size, tcfg.learning_rate, device.type, tcfg.dtype, trainer.compiled is not None))
    steps = "until stopped" if trainer.state.max_iters is None else f"to step {trainer.state.max_iters:,}"
    if tcfg.max_seconds is not None:
        steps = f"for {tcfg.max_seconds:g} s" + ("" if trainer.state.max_iters is None else f" or {steps}")
    if run.source.kind != "chat":  # a fine-tune's conversations are few by design
        report_data_size(len(data.train), model.num_params(), trainer, report, auto=opts.settings == "auto",
                         loaded=run.loaded is not None)
    if trainer.plan.accum > 1 or trainer.world.distributed:
        report(Note(f"each step learns from {tcfg.batch_size} windows: {trainer.plan.describe()}"))
    if out is not None and (out / "config.json").is_file():
        report(Note(f"note: the model in {out} will be replaced when training finishes (interruptions save elsewhere)"))
    return steps


def _folder_meta(run: Run, trainer: Trainer, device: torch.device) -> Callable[..., dict[str, Any]]:
    """meta(val_loss, finished, summary): what a model folder of this run says of it (config.json)."""
    data = run.data

    def meta(val_loss: float | None, finished: bool, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(run.tcfg),
            **({"lora": {"rank": run.lora}} if run.lora else {}),
            **({"fine_tuned": run.fine_tuned} if run.fine_tuned else {}),
            "data": {"source": run.source.to_dict(), "sha256": data.sha256, "chars": data.chars,
                     "train_tokens": int(len(data.train)), "val_tokens": int(len(data.val))},
            "summary": {**run_summary(trainer, device, val_loss, finished), **(summary or {})},
        }

    return meta


@dataclass
class _Keeping:
    """What the loop feeds as it goes: the best weights, the over-fit watch, checkpoints, trackers
    and the live metrics file."""

    best: Best
    watch: OverfitWatch
    checkpoints: Checkpointer
    trackers: list
    live: LiveMetrics | None

    def on_eval(self, entry: dict[str, Any], model: GPT, report: Listener) -> None:
        self.watch.offer(entry, self.best, report)
        self.best.offer(entry, model)
        _on_eval(entry, self.trackers, self.live)


def _run_and_save(opts: TrainOptions, run: Run, trainer: Trainer, device: torch.device, out: Path | None,
                  report: Listener, checks: _Checks) -> TrainResult:
    """The loop, then the save: to `out` when finished, to interrupted/ when stopped."""
    if not trainer.world.is_main:
        return _follow(opts, run, trainer)
    steps = _announce(opts, run, trainer, device, out, report)
    meta = _folder_meta(run, trainer, device)
    checkpoints = Checkpointer(trainer, out, opts.interrupt_root, report, lambda path: save_model_dir(
        path, run.model, run.tokenizer, meta(None, False), trainer.state_dict()))
    lock = TargetLock(out).acquire() if out is not None else None
    keeping = _Keeping(Best(), OverfitWatch(), checkpoints, [], None)
    try:
        keeping.live = LiveMetrics(out, trainer.state.metrics) if out is not None else None  # for repytilian serve
        keeping.trackers = open_trackers(opts.wandb, opts.tensorboard,
                                         {**dataclasses.asdict(run.mcfg), **dataclasses.asdict(run.tcfg)},
                                         name=out.name if out is not None else None)
        with opts.stop or StopRequest() as stop:
            # Only now that the handlers are installed is it safe to tell the user to send a signal.
            report(Started(os.getpid(), steps, trainer.world.size))
            started = time.time()
            try:
                stopped_by = trainer.run(stop, progress=opts.progress, report=report,
                                         after_step=lambda: (checks.after_step(trainer, report),
                                                             checkpoints.maybe_save()),
                                         on_eval=lambda entry: keeping.on_eval(entry, run.model, report))
                if has_lora(run.model):  # the adapters into the weights: what is saved and sampled is plain
                    merge_lora(run.model)
            except Diverged as e:
                raise keep_the_last_good(e, keeping.best, run.model, run.tokenizer, meta, checkpoints,
                                         opts.interrupt_root) from None
            val_loss, saved_to = _save(opts, run, trainer, out, report, stop, stopped_by, keeping, meta, started)
    finally:
        if keeping.live is not None:
            keeping.live.close()
        if lock is not None:
            lock.release()
        if sys.exc_info()[0] is not None:  # training failed: close the trackers' runs all the same
            finish_all(keeping.trackers, {})
    final_meta = meta(val_loss, not stopped_by)
    finish_all(keeping.trackers, final_meta["summary"])
    lm = LanguageModel(run.model, run.tokenizer, final_meta, saved_to)
    return TrainResult(lm, saved_to, stopped_by, val_loss, trainer.state)


def _save(opts: TrainOptions, run: Run, trainer: Trainer, out: Path | None, report: Listener, stop: StopRequest,
          stopped_by: str | None, keeping: _Keeping, meta: Callable, started: float
          ) -> tuple[float | None, Path | None]:
    """After the loop: a stopped run to interrupted/, a finished one evaluated on the whole split and
    saved to `out` (or nothing kept). The whole-split val loss (None when stopped) and the folder."""
    model, tokenizer = run.model, run.tokenizer
    if stopped_by:
        target = interrupted_dir(opts.interrupt_root)
        stop.saving = True
        save_model_dir(target, model, tokenizer, meta(None, False), trainer.state_dict(), card=True)
        report(Stopped(stopped_by, trainer.state.step, target, out, trainer.world.size))
        return None, target
    val_loss = trainer.full_val_loss(progress=opts.progress)
    trainer.final_val_bpb = val_bits_per_byte(run.tokenizer, run.data.val, trainer.final_val_scored, val_loss)
    report(Finished(trainer.state.step, time.time() - started, val_loss, trainer.final_val_scope(),
                    trainer.final_val_bpb, trainer.state.train_seconds))
    if out is None:
        keeping.checkpoints.discard()
        report(NothingSaved())
        return val_loss, None
    try:
        sample = LanguageModel(model, tokenizer).generate("", 300, seed=0)
    except RepytilianError as e:  # the model is saved all the same
        sample = None
        report(Note(f"note: no sample for the model card ({e})"))
    stop.saving = True
    saved_to = save_finished(out, trainer, tokenizer, keeping.best, meta, val_loss, sample, opts, report)
    if not (saved_to / "loss.png").exists() and trainer.state.metrics:
        report(Note("note: matplotlib is not installed, so there is no loss.png "
                    "(pip install 'repytilian[plot]', then repytilian plot DIR)"))
    report(Saved(saved_to))
    return val_loss, saved_to


def _on_eval(entry: dict[str, Any], trackers: list, live: LiveMetrics | None) -> None:
    log_all(trackers, entry)
    if live is not None:
        try:
            live.append(entry)
        except OSError:
            pass  # watching is a nicety: a full disk or a removed folder must not stop training


def _follow(opts: TrainOptions, run: Run, trainer: Trainer) -> TrainResult:
    """A process other than rank 0: trains its share, step for step with the others, and saves
    nothing (rank 0 evaluates the whole split, writes the model folder and the checkpoints)."""
    with opts.stop or StopRequest() as stop:
        stopped_by = trainer.run(stop, progress=False, report=_quiet)
    return TrainResult(LanguageModel(run.model, run.tokenizer), None, stopped_by, None, trainer.state, main=False)
