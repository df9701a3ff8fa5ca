"""The library entry points that the command lines are thin layers over: `train` and `load_model`.

`train` ties the pieces together (data -> tokenizer -> model -> trainer -> model directory);
`load_model` gives a `LanguageModel` that generates text. What happens is reported as events
(events.py), results are returned; nothing is printed (the CLI decides what reaches the terminal).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import (
    ARCHS,
    DEFAULT_MODEL_DIR,
    ITERATIONS,
    ModelConfig,
    TrainConfig,
    auto_settings,
    build_configs,
    check_configs,
    split_overrides,
)
from .data.corpus import DataSource, TokenData, load_corpus, train_tokenizer
from .distributed import World
from .errors import RepytilianError, SettingError
from .events import (
    CheckpointSaved,
    Finished,
    Listener,
    Note,
    NothingSaved,
    Prepared,
    Saved,
    Started,
    Stopped,
    in_words,
    notes_to,
    to_logging,
    parameter_count,
)
from .interop.trackers import finish_all, log_all, open_trackers
from .language_model import LanguageModel
from .model import GPT
from .runtime.cpu import tune_for_training
from .runtime.precision import DTYPES, DtypeRecheck, resolve_dtype
from .store.folder import (
    LoadedModel,
    better_best,
    check_target,
    interrupted_dir,
    load_model_dir,
    save_model_dir,
)
from .store.live import LiveMetrics
from .store.lock import TargetLock
from .tokenizers import (
    DEFAULT_TOKENIZER,
    Tokenizer,
    UnknownTokensError,
    tokenizer_class,
)
from .train import Diverged, StopRequest, Trainer, TrainState, pick_device, plan_batches


# --- opening a model folder -------------------------------------------------------------


def load_model(path: str | Path = DEFAULT_MODEL_DIR, device: str = "auto", which: str = "best") -> LanguageModel:
    """The model of a folder, to sample or evaluate. `which="best"`: where the run kept a best model
    (best/) that is better over the whole validation split than its last, that one, and
    `.best` says so (step and losses); `which="last"`: the folder's own, last model."""
    if which not in ("best", "last"):
        raise SettingError("which", f"is 'best' or 'last', not {which!r}")
    path = Path(path)
    best = better_best(path) if which == "best" else None
    loaded = load_model_dir(path / "best" if best else path, pick_device(device))
    lm = LanguageModel(loaded.model, loaded.tokenizer, loaded.meta, loaded.path)
    lm.best = best
    return lm


# --- training ----------------------------------------------------------------------------


@dataclass
class TrainOptions:
    data: DataSource | None = None  # None: the loaded model's data, else Tiny Shakespeare
    tokenizer: str | None = None  # None: the loaded model's, else characters
    tokenizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"vocab_size": 512} for bpe
    settings: str = "default"
    arch: str | None = None  # None: "classic" (or, with `load`, the loaded model's)
    iterations: str | None = None  # None: "default" (or, with `load`, finish the saved schedule)
    overrides: dict[str, Any] = field(default_factory=dict)  # field name -> value or CLI string
    out: str | None = DEFAULT_MODEL_DIR  # "" or None: save nothing at the end
    load: str | None = None
    device: str = "auto"
    seed: int | None = None
    progress: bool = True
    interrupt_root: str = "models"  # interrupted runs go to <root>/interrupted/<timestamp>/
    stop: StopRequest | None = None  # lets a caller (a test, a server) stop training early
    wandb: bool = False  # log each evaluation to Weights & Biases
    tensorboard: str | None = None  # ...and/or to TensorBoard logs in this folder
    measure_dtype: bool = False  # --dtype auto: measure again instead of taking the remembered choice


@dataclass
class TrainResult:
    language_model: LanguageModel
    saved_to: Path | None
    stopped_by: str | None  # the signal that stopped training early, or None
    val_loss: float | None  # over the whole validation split, for finished runs
    state: TrainState
    main: bool = True  # False in the processes of a torchrun job other than rank 0 (which saved and spoke)


def _resume_setup(opts: TrainOptions, loaded: LoadedModel) -> tuple[Any, Any]:
    """Train config and state for continuing a saved model, saying what happens to the LR schedule."""
    model_over, train_over = split_overrides(opts.overrides)
    if opts.arch is not None:
        model_over = {**ARCHS.get(opts.arch, {}), **model_over}
    mcfg = loaded.model.config
    changed = {k: v for k, v in model_over.items() if k != "dropout" and getattr(mcfg, k) != v}
    if changed:
        names = ", ".join(f"{k}={v}" for k, v in changed.items())
        raise RepytilianError(
            f"cannot change the shape of a trained model ({names}); -l continues {loaded.path} as it is "
            "(train a new model without -l to change its shape)"
        )
    if "dropout" in model_over:
        mcfg.dropout = model_over["dropout"]
        loaded.model = _set_dropout(loaded.model, mcfg.dropout)
    tcfg = loaded.train_config
    if opts.iterations is not None:
        preset = ITERATIONS.get(opts.iterations)
        if preset is None:
            raise SettingError("iterations", f"unknown {{setting}} preset {opts.iterations!r}; choose one of: {', '.join(ITERATIONS)}")
        tcfg = dataclasses.replace(tcfg, **preset)
    if train_over.get("optimizer", tcfg.optimizer) != tcfg.optimizer:
        raise RepytilianError(
            f"{loaded.path} was trained with {tcfg.optimizer}; -l continues it with the same optimiser "
            f"(its saved state is {tcfg.optimizer}'s), so drop --optimizer"
        )
    tcfg = dataclasses.replace(tcfg, **train_over)
    if opts.seed is not None:
        tcfg.seed = opts.seed
    check_configs(mcfg, tcfg)
    return mcfg, tcfg


def _set_dropout(model: GPT, p: float) -> GPT:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p
    return model


def _plan_schedule(state: TrainState, more_steps: int | None, asked: bool, report: Listener) -> TrainState:
    """Continue an unfinished schedule exactly; extend a finished one (or on request) with a new one."""
    if not asked and not state.finished:
        left = "until stopped" if state.max_iters is None else f"to step {state.max_iters}"
        report(Note(f"resuming at step {state.step}, continuing the saved schedule {left}"))
        return state
    state.schedule_start = state.step
    state.max_iters = None if more_steps is None else state.step + more_steps
    what = "until stopped" if more_steps is None else f"{more_steps} more steps (to step {state.max_iters})"
    report(Note(f"resuming at step {state.step}: training {what} with a new warm-up and decay of the learning rate"))
    return state


@dataclass
class _Run:
    """What a training run is made of, before the loop starts."""

    model: GPT
    tokenizer: Tokenizer
    data: TokenData
    source: DataSource
    mcfg: ModelConfig
    tcfg: TrainConfig
    loaded: LoadedModel | None = None


def _fresh_run(opts: TrainOptions, device: torch.device, report: Listener) -> _Run:
    """A new model: settings from the presets and overrides, a tokenizer trained on the data."""
    tokenizer_cls = tokenizer_class(opts.tokenizer or DEFAULT_TOKENIZER)
    mcfg, tcfg = build_configs("default" if opts.settings == "auto" else opts.settings, opts.iterations or "default",
                               opts.overrides, opts.arch or "classic")
    if opts.iterations is None and tcfg.max_seconds is not None and "max_iters" not in opts.overrides:
        tcfg.max_iters = None  # a time budget alone: the budget, not -i default's 2,000 steps, ends training
    if opts.seed is not None:
        tcfg.seed = opts.seed
    source = opts.data or DataSource("dataset", "shakespeare")
    corpus = load_corpus(source, tokenizer_cls.input_format)
    started_tokenizing = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_cls, corpus, **opts.tokenizer_options)
    data = TokenData.from_corpus(corpus, tokenizer)
    if time.perf_counter() - started_tokenizing > 2:
        report(Note(f"tokenized in {time.perf_counter() - started_tokenizing:.1f}s"))
    if opts.settings == "auto":  # the shape follows the data (and the steps, unless told)
        given = opts.iterations is not None or "max_iters" in opts.overrides or tcfg.max_seconds is not None
        chosen, why = auto_settings(len(data.train), tokenizer.vocab_size, given)
        report(Note(why))
        mcfg, tcfg = build_configs("default", opts.iterations or "default", {**chosen, **opts.overrides},
                                   opts.arch or "classic")
        if not given:
            tcfg.max_iters = chosen["max_iters"]
        elif opts.iterations is None and tcfg.max_seconds is not None and "max_iters" not in opts.overrides:
            tcfg.max_iters = None
        if opts.seed is not None:
            tcfg.seed = opts.seed
    mcfg.vocab_size = tokenizer.vocab_size
    torch.manual_seed(tcfg.seed)
    return _Run(GPT(mcfg).to(device), tokenizer, data, source, mcfg, tcfg)


def _resumed_run(opts: TrainOptions, device: torch.device) -> _Run:
    """A saved model with its optimiser state, its tokenizer, and its data unless other data is given.
    A folder saved without optimiser state (an imported or shipped model) is fine-tuned: its weights
    are the start of a new run with a fresh optimiser."""
    fine_tune = not (Path(opts.load) / "trainer_state").is_dir()
    loaded = load_model_dir(opts.load, device, with_trainer=not fine_tune)
    if opts.tokenizer and tokenizer_class(opts.tokenizer).name != loaded.tokenizer.name:
        raise RepytilianError(
            f"{opts.load} was trained with the {loaded.tokenizer.name!r} tokenizer, not {opts.tokenizer!r}; "
            f"drop -z (or use -z {loaded.tokenizer.name}) to continue it"
        )
    if fine_tune and "train" not in loaded.meta:  # imported: the training settings of -s and -i
        _, preset = build_configs(opts.settings, "default", {}, "classic")
        loaded.meta["train"] = dataclasses.asdict(preset)
    mcfg, tcfg = _resume_setup(opts, loaded)
    if fine_tune and "learning_rate" not in opts.overrides:
        # Pretrained weights are near a good solution: a tenth of the from-scratch peak keeps them there
        tcfg.learning_rate, tcfg.min_lr = tcfg.learning_rate / 10, tcfg.min_lr / 10
    given = [k for k, v in opts.tokenizer_options.items() if v is not None]
    if given:
        raise SettingError(given[0], "cannot be given when continuing a saved model: its tokenizer cannot change")
    saved_source = loaded.meta.get("data", {}).get("source", {"kind": "dataset", "value": "shakespeare"})
    source = opts.data or DataSource.from_dict(saved_source)
    corpus = load_corpus(source, loaded.tokenizer.input_format)
    try:
        data = TokenData.from_corpus(corpus, loaded.tokenizer)
    except UnknownTokensError as e:
        raise RepytilianError(f"the training data does not fit the vocabulary of {opts.load}: {e}") from None
    return _Run(loaded.model, loaded.tokenizer, data, source, mcfg, tcfg, loaded)


def train(opts: TrainOptions, log: Callable[[str], None] | None = None, on_event: Listener | None = None
          ) -> TrainResult:
    """Train a new model, or continue a saved one (`opts.load`), and save it to `opts.out`.

    What happens is reported as events (events.py) to `on_event`, as are the notes of the code it
    calls (events.note) and its progress; or their words to `log` (e.g. `print`); with neither, to
    Python's logging (logger "repytilian")."""
    report = on_event or (in_words(log) if log is not None else to_logging)
    return _train(opts, report)


def _train(opts: TrainOptions, report: Listener) -> TrainResult:
    world = World.from_env()  # under torchrun: this process's rank among the others
    device = world.place(pick_device(opts.device))
    if not world.is_main:
        report = _quiet  # rank 0 speaks for all; errors still reach each process's stderr
        opts = dataclasses.replace(opts, progress=False)
    if device.type == "cpu":
        tune_for_training()  # before any timing: the threads the measurement and the training use
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
    if out is not None and world.is_main:
        check_target(out)
    run = _resumed_run(opts, device) if opts.load else _fresh_run(opts, device, report)
    run.data.check_block_size(run.mcfg.block_size)  # before anything runs the model at that length
    world.same_everywhere(_fingerprint(run), "data or tokenizers")
    # The number format is settled before the trainer exists (and stored: a resume computes the same);
    # with several processes rank 0 measures (when auto asks for it) and the others take its choice.
    auto = run.tcfg.dtype == "auto"
    if world.is_main or not auto:
        run.tcfg.dtype = resolve_dtype(run.tcfg.dtype, device, run.model, run.tcfg.micro_batch or run.tcfg.batch_size,
                                       warn=lambda text: report(Note(text, "warning")),
                                       tell=lambda text: report(Note(text)), remeasure=opts.measure_dtype)
    run.tcfg.dtype = world.from_main(run.tcfg.dtype if run.tcfg.dtype in DTYPES else "float32", tuple(DTYPES))
    plan = plan_batches(run.tcfg, run.mcfg, world.size, device, run.tcfg.dtype)
    if plan.why:
        report(Note(plan.why))
    trainer = Trainer(run.model, run.data, run.tcfg, device, report=report, world=world, plan=plan)
    if run.loaded is not None and run.loaded.trainer is None:
        report(Note(f"fine-tuning {opts.load}: it was saved without optimiser state (imported or shipped), so its "
                    f"weights start a new run of {run.tcfg.max_iters or 'endless'} steps with a fresh optimiser, "
                    f"peak learning rate {run.tcfg.learning_rate:g} (--lr sets it)"))
    elif run.loaded is not None:
        trainer.load_state_dict(run.loaded.trainer)
        asked = opts.iterations is not None or "max_iters" in opts.overrides
        trainer.state = _plan_schedule(trainer.state, run.tcfg.max_iters, asked, report)
    recheck = None
    if auto and not world.distributed and trainer.compiled is None:
        recheck = DtypeRecheck(run.model, device, run.tcfg.micro_batch or run.tcfg.batch_size, run.tcfg.dtype)
    return _run_and_save(opts, run, trainer, device, out, report, recheck)


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


def _fingerprint(run: "_Run") -> str:
    """What every process must have prepared alike: the data's text, the tokenizer's ids for it."""
    head = run.data.train[:100_000]
    return f"{run.data.sha256}:{len(run.data.train)}:{len(run.data.val)}:{run.tokenizer.vocab_size}:" + \
        hashlib.sha256(head.astype("int64").tobytes()).hexdigest()


def _run_and_save(opts: TrainOptions, run: _Run, trainer: Trainer, device: torch.device, out: Path | None,
                  report: Listener, recheck: DtypeRecheck | None = None) -> TrainResult:
    """The loop, then the save: to `out` when finished, to interrupted/ when stopped."""
    model, tokenizer, data, source, mcfg, tcfg = run.model, run.tokenizer, run.data, run.source, run.mcfg, run.tcfg
    world = trainer.world
    if not world.is_main:
        return _follow(opts, run, trainer)
    pid = os.getpid()
    report(Prepared(source.describe(), data.chars, tokenizer.name, tokenizer.vocab_size, len(data.train),
                    len(data.val), mcfg.n_layer, mcfg.n_head, mcfg.n_embd, mcfg.block_size, model.num_params(),
                    tcfg.batch_size, tcfg.learning_rate, device.type, tcfg.dtype, trainer.compiled is not None))
    steps = "until stopped" if trainer.state.max_iters is None else f"to step {trainer.state.max_iters:,}"
    if tcfg.max_seconds is not None:
        steps = f"for {tcfg.max_seconds:g} s" + ("" if trainer.state.max_iters is None else f" or {steps}")
    report_data_size(len(data.train), model.num_params(), trainer, report, auto=opts.settings == "auto")
    if trainer.plan.accum > 1 or world.distributed:
        report(Note(f"each step learns from {tcfg.batch_size} windows: {trainer.plan.describe()}"))
    if out is not None and (out / "config.json").is_file():
        report(Note(f"note: the model in {out} will be replaced when training finishes (interruptions save elsewhere)"))

    best, watch = _Best(), _OverfitWatch()

    def meta(val_loss: float | None, finished: bool, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(tcfg),
            "data": {"source": source.to_dict(), "sha256": data.sha256, "chars": data.chars,
                     "train_tokens": int(len(data.train)), "val_tokens": int(len(data.val))},
            "summary": {**_summary(trainer, device, val_loss, finished), **(summary or {})},
        }

    checkpoints = _Checkpointer(trainer, out, opts.interrupt_root, report,
                                lambda path: save_model_dir(path, model, tokenizer, meta(None, False), trainer.state_dict()))
    started = time.time()
    lock = TargetLock(out).acquire() if out is not None else None
    trackers = []
    live = None
    try:
        live = LiveMetrics(out, trainer.state.metrics) if out is not None else None  # for repytilian serve
        trackers = open_trackers(opts.wandb, opts.tensorboard, {**dataclasses.asdict(mcfg), **dataclasses.asdict(tcfg)},
                                 name=out.name if out is not None else None)
        with opts.stop or StopRequest() as stop:
            # Only now that the handlers are installed is it safe to tell the user to send a signal.
            report(Started(pid, steps, world.size))
            try:
                stopped_by = trainer.run(stop, progress=opts.progress, report=report,
                                         after_step=lambda: (_recheck_dtype(recheck, trainer, report),
                                                             checkpoints.maybe_save()),
                                         on_eval=lambda entry: (watch.offer(entry, best, report), best.offer(entry, model),
                                   _on_eval(entry, trackers, live)))
            except Diverged as e:
                raise _keep_the_last_good(e, best, model, tokenizer, meta, checkpoints, opts.interrupt_root) from None
            val_loss = None
            if stopped_by:
                target = interrupted_dir(opts.interrupt_root)
                stop.saving = True
                save_model_dir(target, model, tokenizer, meta(None, False), trainer.state_dict(), card=True)
                report(Stopped(stopped_by, trainer.state.step, target, out, world.size))
                saved_to = target
            else:
                val_loss = trainer.full_val_loss(progress=opts.progress)
                report(Finished(trainer.state.step, time.time() - started, val_loss, trainer.final_val_scope()))
                saved_to = None
                if out is not None:
                    try:
                        sample = LanguageModel(model, tokenizer).generate("", 300, seed=0)
                    except RepytilianError as e:  # the model is saved all the same
                        sample = None
                        report(Note(f"note: no sample for the model card ({e})"))
                    stop.saving = True
                    saved_to = _save_finished(out, trainer, tokenizer, best, meta, val_loss, sample, opts, report)
                    if not (saved_to / "loss.png").exists() and trainer.state.metrics:
                        report(Note("note: matplotlib is not installed, so there is no loss.png "
                                    "(pip install 'repytilian[plot]', then repytilian plot DIR)"))
                    report(Saved(saved_to))
                else:
                    checkpoints.discard()
                    report(NothingSaved())
    finally:
        if live is not None:
            live.close()
        if lock is not None:
            lock.release()
        if sys.exc_info()[0] is not None:  # training failed: close the trackers' runs all the same
            finish_all(trackers, {})
    final_meta = meta(val_loss, not stopped_by)
    finish_all(trackers, final_meta["summary"])
    lm = LanguageModel(model, tokenizer, final_meta, saved_to)
    return TrainResult(lm, saved_to, stopped_by, val_loss, trainer.state)


OVERFIT_RISE = 0.05  # the val loss this far above its best, while the train loss falls, is over-fitting


def report_data_size(train_tokens: int, params: int, trainer: Trainer, report: Listener, auto: bool = False) -> None:
    """Tokens per parameter, and a warning when the text is small for the model."""
    per_param = train_tokens / max(params, 1)
    state = trainer.state
    text = f"{train_tokens:,} training tokens for {parameter_count(params)} parameters: {per_param:.2g} tokens per parameter"
    passes = None  # how often the run sees each token; unknown for runs until stopped or timed
    if state.max_iters is not None and train_tokens:
        passes = (state.max_iters - state.step) * trainer.cfg.batch_size * trainer.model.config.block_size / train_tokens
        text += f"; the {state.max_iters - state.step:,} steps see each token about {passes:.3g} times"
    report(Note(text))
    if per_param < 1 and (passes is None or passes >= 1):  # seen less than once, nothing is learnt by heart
        smaller = "more text" if auto else "a smaller model (-s tiny, or -s auto to fit it to the data)"
        report(Note("warning: the text is small for this model: it can learn it by heart and will over-fit (the "
                    f"val loss rises after a while). {smaller[0].upper() + smaller[1:]}, --dropout 0.2 or fewer "
                    "steps help; the best model by val loss is kept in best/ meanwhile", "warning"))


class _OverfitWatch:
    """Says once when the val loss climbs away from its best while the train loss keeps falling."""

    def __init__(self) -> None:
        self.said = False

    def offer(self, entry: dict[str, Any], best: "_Best", report: Listener) -> None:
        if self.said or best.val_loss is None or best.train_loss is None:
            return
        val, train = entry["val_loss"], entry["train_loss"]
        if val > best.val_loss * (1 + OVERFIT_RISE) and train < best.train_loss:
            self.said = True
            report(Note(f"warning: step {entry['step']}: the val loss ({val:.4f}) has risen "
                        f"{100 * (val / best.val_loss - 1):.0f}% above its best ({best.val_loss:.4f} at step "
                        f"{best.step}) while the train loss fell to {train:.4f}: the model is over-fitting. The best "
                        "model is kept for best/; a smaller model, --dropout, more text or fewer steps would help",
                        "warning"))


class _Best:
    """The weights at the best evaluation so far (lowest val loss estimate), kept on the CPU: for
    best/, and as the last good model should the loss diverge."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.val_loss: float | None = None
        self.train_loss: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(self, entry: dict[str, Any], model: GPT) -> None:
        val = entry["val_loss"]
        if math.isfinite(val) and (self.val_loss is None or val < self.val_loss):
            self.step, self.val_loss, self.train_loss = entry["step"], val, entry["train_loss"]
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def model(self, like: GPT) -> GPT:
        copy = GPT(like.config).to(next(like.parameters()).device)
        copy.load_state_dict(self.weights)
        return copy.to(next(like.parameters()).dtype).eval()


def _save_finished(out: Path, trainer: Trainer, tokenizer: Tokenizer, best: _Best, meta: Callable,
                   val_loss: float, sample: str | None, opts: TrainOptions, report: Listener) -> Path:
    """The finished run's folder: the last model (and, with --keep both, best/), or the best alone."""
    model, keep, step = trainer.model, trainer.cfg.keep, trainer.state.step
    if keep == "last" or best.weights is None or best.step == step:
        where = None if best.step is None else "this folder (the last evaluation was the best)"
        extra = {"best": {"step": best.step, "val_loss": best.val_loss, "kept": where}} if best.step else None
        return save_model_dir(out, model, tokenizer, meta(val_loss, True, extra), trainer.state_dict(),
                              card=True, sample=sample)
    best_model = best.model(model)
    best_full = trainer.full_val_loss(progress=opts.progress, model=best_model)
    info = {"step": best.step, "val_loss": best.val_loss, "val_loss_full": round(best_full, 5),
            "last_val_loss_full": round(val_loss, 5)}
    metrics = trainer.state.metrics
    if keep == "best":
        info["kept"] = "this folder (the last model was not kept: --keep best)"
        summary = {"best": info, "step": best.step, "val_loss_full": round(best_full, 5), "best_of_steps": step}
        saved = save_model_dir(out, best_model, tokenizer, meta(best_full, True, summary), None, card=True,
                               metrics=metrics)
        report(Note(f"kept the best model, step {best.step} of {step} (whole-split val loss {best_full:.4f}, the "
                    f"last {val_loss:.4f}) in {out}; it has no optimiser state, so -l fine-tunes it afresh"))
        return saved
    info["kept"] = "best/"
    best_summary = {"best": {**info, "kept": "this folder"}, "step": best.step, "val_loss_full": round(best_full, 5),
                    "best_of": str(out)}
    saved = save_model_dir(out, model, tokenizer, meta(val_loss, True, {"best": info}), trainer.state_dict(), card=True,
                           sample=sample, inside=lambda folder: save_model_dir(
                               folder / "best", best_model, tokenizer, meta(best_full, True, best_summary), None,
                               card=True, metrics=metrics))
    if best_full < val_loss:
        used = (f"sampling {out} takes this best model; the last one stays in {out} itself, which training "
                "continues exactly")
    else:
        used = f"no better over the whole split, so sampling {out} takes the last model"
    report(Note(f"the best evaluation was at step {best.step} (val {best.val_loss:.4f}): kept in {out}/best/, "
                f"whole-split val loss {best_full:.4f} against the last model's {val_loss:.4f}; {used}"))
    return saved


def _keep_the_last_good(error: Diverged, best: _Best, model: GPT, tokenizer: Tokenizer, meta: Callable,
                        checkpoints: "_Checkpointer", root: str) -> Diverged:
    """A diverged run keeps what was good: the best evaluated weights, saved to interrupted/."""
    kept = []
    if checkpoints.saved:
        kept.append(f"the last checkpoint, {checkpoints.path}, is as it was")
    if best.weights is not None:
        target = interrupted_dir(root)
        summary = {"step": best.step, "diverged_at": error.step, "best": {"step": best.step, "val_loss": best.val_loss}}
        save_model_dir(target, best.model(model), tokenizer, meta(None, False, summary), None, card=True)
        kept.append(f"the last good model (step {best.step}, val loss {best.val_loss:.4f}) is saved in {target} "
                    f"(generate.py -m {target}; training.py -l {target} fine-tunes it)")
    return Diverged(error.loss, error.step, "; " + "; ".join(kept) if kept else "")


def _on_eval(entry: dict[str, Any], trackers: list, live: LiveMetrics | None) -> None:
    log_all(trackers, entry)
    if live is not None:
        try:
            live.append(entry)
        except OSError:
            pass  # watching is a nicety: a full disk or a removed folder must not stop training


def _follow(opts: TrainOptions, run: _Run, trainer: Trainer) -> TrainResult:
    """A process other than rank 0: trains its share, step for step with the others, and saves
    nothing (rank 0 evaluates the whole split, writes the model folder and the checkpoints)."""
    with opts.stop or StopRequest() as stop:
        stopped_by = trainer.run(stop, progress=False, report=_quiet)
    return TrainResult(LanguageModel(run.model, run.tokenizer), None, stopped_by, None, trainer.state, main=False)


class _Checkpointer:
    """Saves the full state every `checkpoint_every` steps and/or `checkpoint_minutes` minutes: into
    the -m folder, or, with -m "", into one interrupted/ folder for this run."""

    def __init__(self, trainer: Trainer, out: Path | None, interrupt_root: str, report: Listener,
                 save: Callable[[Path], Any]):
        self.trainer, self.cfg = trainer, trainer.cfg
        self.out, self.root, self.report, self.save = out, interrupt_root, report, save
        self.last_time = time.monotonic()
        self.path: Path | None = out
        self.saved = False  # whether this run has written a checkpoint

    def maybe_save(self) -> None:
        step = self.trainer.state.step
        by_steps = self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0
        by_time = self.cfg.checkpoint_minutes and time.monotonic() - self.last_time >= 60 * self.cfg.checkpoint_minutes
        if not (by_steps or by_time) or self.trainer.finished():  # the final save follows anyway
            return
        if self.path is None:
            self.path = interrupted_dir(self.root)
        self.save(self.path)
        self.saved = True
        self.last_time = time.monotonic()
        self.report(CheckpointSaved(step, self.path))

    def discard(self) -> None:
        """With -m "", a finished run keeps nothing, checkpoints included."""
        if self.out is None and self.path is not None and self.path.exists():
            shutil.rmtree(self.path)


def _summary(trainer: Trainer, device: torch.device, val_loss: float | None, finished: bool) -> dict[str, Any]:
    last = trainer.state.metrics[-1] if trainer.state.metrics else {}
    return {
        "step": trainer.state.step,
        "tokens_seen": trainer.state.tokens_seen,
        "train_seconds": round(trainer.state.train_seconds, 1),
        "finished": finished,
        "val_loss_full": None if val_loss is None else round(val_loss, 5),
        "val_loss_full_scope": trainer.final_val_scope(),
        "last_eval": last,
        "best_val_loss": trainer.state.best_val_loss,
        "device": device.type,
        "parameters": trainer.model.num_params(),
    }
