"""What a run keeps: the best weights by val loss (best/), periodic checkpoints, the finished folder,
the last good model of a diverged run, and the warnings about data size and over-fitting."""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..events import (
    CheckpointSaved,
    Listener,
    Note,
    parameter_count,
)
from ..lora import merged_state_dict
from ..model import GPT
from ..store.folder import (
    interrupted_dir,
    save_model_dir,
)
from ..tokenizers import (
    Tokenizer,
)
from ..trainer import (
    Diverged,
    Trainer,
)
from .options import TrainOptions

OVERFIT_RISE = 0.05  # the val loss this far above its best, while the train loss falls, is over-fitting
# Below this many training tokens a parameter a model can learn its text by heart: warned before the
# run. Dropout lowers the bar: the shipped v3c (0.67 tokens a parameter, dropout 0.1) was still
# improving after 20 passes over Tiny Shakespeare, while nanoGPT's recipe for it (0.09, dropout 0.2)
# says in its config that it over-fits. During any run OverfitWatch says so if it happens.
SMALL_TEXT = 1.0
SMALL_TEXT_WITH_DROPOUT = 0.25  # with dropout 0.1 or more


def report_data_size(train_tokens: int, params: int, trainer: Trainer, report: Listener, auto: bool = False,
                     loaded: bool = False) -> None:
    """Tokens per parameter, and a warning when the text is small for the model (whose shape a
    `loaded` model keeps: no smaller one to suggest)."""
    per_param = train_tokens / max(params, 1)
    state = trainer.state
    text = f"{train_tokens:,} training tokens for {parameter_count(params)} parameters: {per_param:.2g} tokens per parameter"
    passes = None  # how often the run sees each token; unknown for runs until stopped or timed
    if state.max_iters is not None and train_tokens:
        passes = (state.max_iters - state.step) * trainer.cfg.batch_size * trainer.model.config.block_size / train_tokens
        text += f"; the {state.max_iters - state.step:,} steps see each token about {passes:.3g} times"
    report(Note(text))
    small = SMALL_TEXT_WITH_DROPOUT if trainer.model.config.dropout >= 0.1 else SMALL_TEXT
    if per_param < small and (passes is None or passes >= 1):  # seen less than once, nothing is learnt by heart
        # auto fitted the model to the text already; a loaded model keeps its shape
        first = "More text" if auto or loaded else "A smaller model (`settings` tiny, or `settings` auto to fit it to the data)"
        report(Note("warning: the text is small for this model: it can learn it by heart and will over-fit (the "
                    f"val loss rises after a while). {first}, `dropout` 0.2 or fewer steps help; the best model by "
                    "val loss is kept in best/ meanwhile", "warning", ("settings", "dropout")))


class OverfitWatch:
    """Says once when the val loss climbs away from its best while the train loss keeps falling."""

    def __init__(self) -> None:
        self.said = False

    def offer(self, entry: dict[str, Any], best: "Best", report: Listener) -> None:
        if self.said or best.val_loss is None or best.train_loss is None:
            return
        val, train = entry["val_loss"], entry["train_loss"]
        if val > best.val_loss * (1 + OVERFIT_RISE) and train < best.train_loss:
            self.said = True
            report(Note(f"warning: step {entry['step']}: the val loss ({val:.4f}) has risen "
                        f"{100 * (val / best.val_loss - 1):.0f}% above its best ({best.val_loss:.4f} at step "
                        f"{best.step}) while the train loss fell to {train:.4f}: the model is over-fitting. The best "
                        "model is kept for best/; a smaller model, `dropout`, more text or fewer steps would help",
                        "warning", ("dropout",)))


class Best:
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
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in merged_state_dict(model.state_dict()).items()}

    def model(self, like: GPT) -> GPT:
        copy = GPT(like.config).to(next(like.parameters()).device)
        copy.load_state_dict(self.weights)
        return copy.to(next(like.parameters()).dtype).eval()


def save_finished(out: Path, trainer: Trainer, tokenizer: Tokenizer, best: Best, meta: Callable,
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
        info["kept"] = "this folder (the last model was not kept: keep best)"
        summary = {"best": info, "step": best.step, "val_loss_full": round(best_full, 5), "best_of_steps": step}
        saved = save_model_dir(out, best_model, tokenizer, meta(best_full, True, summary), None, card=True,
                               metrics=metrics)
        report(Note(f"kept the best model, step {best.step} of {step} (whole-split val loss {best_full:.4f}, the "
                    f"last {val_loss:.4f}) in {out}; it has no optimiser state, so `load` fine-tunes it afresh",
                    settings=("load",)))
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


def keep_the_last_good(error: Diverged, best: Best, model: GPT, tokenizer: Tokenizer, meta: Callable,
                        checkpoints: "Checkpointer", root: str) -> Diverged:
    """A diverged run keeps what was good: the best evaluated weights, saved to interrupted/."""
    kept = []
    if checkpoints.saved:
        kept.append(f"the last checkpoint, {checkpoints.path}, is as it was")
    if best.weights is not None:
        target = interrupted_dir(root)
        summary = {"step": best.step, "diverged_at": error.step, "best": {"step": best.step, "val_loss": best.val_loss}}
        save_model_dir(target, best.model(model), tokenizer, meta(None, False, summary), None, card=True)
        kept.append(f"the last good model (step {best.step}, val loss {best.val_loss:.4f}) is saved in {target} "
                    f"(`load` {target} fine-tunes it)")
    return Diverged(error.loss, error.step, "; " + "; ".join(kept) if kept else "")




class Checkpointer:
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


def run_summary(trainer: Trainer, device: torch.device, val_loss: float | None, finished: bool) -> dict[str, Any]:
    last = trainer.state.metrics[-1] if trainer.state.metrics else {}
    return {
        "step": trainer.state.step,
        "tokens_seen": trainer.state.tokens_seen,
        "train_seconds": round(trainer.state.train_seconds, 1),
        "finished": finished,
        "val_loss_full": None if val_loss is None else round(val_loss, 5),
        "val_loss_full_scope": trainer.final_val_scope(),
        "val_bits_per_byte": None if val_loss is None or getattr(trainer, "final_val_bpb", None) is None
        else round(trainer.final_val_bpb, 5),
        "last_eval": last,
        "best_val_loss": trainer.state.best_val_loss,
        "device": device.type,
        "parameters": trainer.model.num_params(),
    }
