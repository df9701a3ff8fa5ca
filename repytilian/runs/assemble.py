"""Assembling a run before its loop starts: a new model from presets and overrides, or a saved one
with its optimiser state, its tokenizer and its data (`Run`); what happens to a resumed schedule."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..chat_format import with_chat_tokens
from ..config import (
    ARCHS,
    ITERATIONS,
    ModelConfig,
    TrainConfig,
    auto_settings,
    build_configs,
    check_configs,
    split_overrides,
)
from ..data.conversations import ChatData, chat_data, read_chat
from ..data.corpus import DataSource, TokenData, load_corpus, train_tokenizer
from ..data.jsondata import JsonCorpus, looks_like_token_data
from ..data.textfiles import TextFiles
from ..dropout import Dropout
from ..errors import RepytilianError, SettingError
from ..events import (
    Listener,
    Note,
    note,
)
from ..model import GPT
from ..store.folder import (
    LoadedModel,
    load_model_dir,
)
from ..tokenizers import (
    DEFAULT_TOKENIZER,
    Tokenizer,
    UnknownTokensError,
    tokenizer_class,
)
from ..tokenizers.base import text_chunks
from ..tokenizers.characters import CharacterTokenizer
from ..tokenizers.spaced_words import SpacedWordTokenizer
from ..tokenizers.words import WordTokenizer, split_words
from ..trainer import (
    TrainState,
)
from .options import TrainOptions

CHAT_EPOCHS = 3  # a first chat fine-tune goes over its conversations this many times, unless told,
CHAT_MIN_STEPS = 200  # and takes at least this many steps (a few conversations are learned slowly)
CHAT_MAX_STEPS = 2000
FINE_TUNE_PASSES = 4  # a fine-tune on other text goes over it this many times, unless told,
FINE_TUNE_MIN_STEPS = 100  # and takes at least this many steps


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
            f"cannot change the shape of a trained model ({names}); `load` continues {loaded.path} as it is "
            "(train a new model without `load` to change its shape)", ("load",)
        )
    if "dropout" in model_over:
        mcfg.dropout = model_over["dropout"]
        loaded.model = set_dropout(loaded.model, mcfg.dropout)
    tcfg = loaded.train_config
    if opts.iterations is not None:
        preset = ITERATIONS.get(opts.iterations)
        if preset is None:
            raise SettingError("iterations", f"unknown {{setting}} preset {opts.iterations!r}; choose one of: {', '.join(ITERATIONS)}")
        tcfg = dataclasses.replace(tcfg, **preset)
    if train_over.get("optimizer", tcfg.optimizer) != tcfg.optimizer:
        raise RepytilianError(
            f"{loaded.path} was trained with {tcfg.optimizer}; `load` continues it with the same optimiser "
            f"(its saved state is {tcfg.optimizer}'s), so leave `optimizer` out", ("load", "optimizer")
        )
    tcfg = dataclasses.replace(tcfg, **train_over)
    if opts.seed is not None:
        tcfg.seed = opts.seed
    check_configs(mcfg, tcfg)
    return mcfg, tcfg


def set_dropout(model: GPT, p: float) -> GPT:
    """Every dropout of the model set to p, the attention weights' included."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, Dropout)):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p
    return model


def plan_schedule(state: TrainState, more_steps: int | None, asked: bool, report: Listener) -> TrainState:
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
class Run:
    """What a training run is made of, before the loop starts."""

    model: GPT
    tokenizer: Tokenizer
    data: TokenData | ChatData
    source: DataSource
    mcfg: ModelConfig
    tcfg: TrainConfig
    loaded: LoadedModel | None = None
    lora: int | None = None  # the rank of the adapters it trains (lora.py), if any
    fine_tuned: dict[str, Any] | None = None  # what a fine-tune started from, its from-scratch learning rates


def fresh_run(opts: TrainOptions, device: torch.device, report: Listener) -> Run:
    """A new model: settings from the presets and overrides, a tokenizer trained on the data."""
    tokenizer_cls = tokenizer_class(opts.tokenizer or DEFAULT_TOKENIZER)
    mcfg, tcfg = build_configs("default" if opts.settings == "auto" else opts.settings, opts.iterations or "default",
                               opts.overrides, opts.arch)
    if opts.iterations is None and tcfg.max_seconds is not None and "max_iters" not in opts.overrides:
        tcfg.max_iters = None  # a time budget alone: the budget, not -i default's 2,000 steps, ends training
    if opts.seed is not None:
        tcfg.seed = opts.seed
    source = opts.data or DataSource("dataset", "shakespeare")
    if source.kind == "chat":
        raise RepytilianError("`chat` fine-tunes a model to chat: give the model folder to start from as `load` "
                              "(one you trained, a shipped one, or an imported GPT-2)", ("chat", "load"))
    corpus = load_corpus(source, tokenizer_cls.input_format)
    if opts.tokenizer is None and looks_like_token_data(source.kind, source.value):
        what = source.value if source.kind == "file" else f"every file in {source.value}"
        note(f"note: {what} is JSON, read here as text a character at a time; for JSON token data "
             "(music, chords: arrays of tokens) give `tokenizer` json", settings=("tokenizer",))
    started_tokenizing = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_cls, corpus, **opts.tokenizer_options)
    data = TokenData.from_corpus(corpus, tokenizer)
    if time.perf_counter() - started_tokenizing > 2:
        report(Note(f"tokenized in {time.perf_counter() - started_tokenizing:.1f}s"))
    if opts.settings == "auto":  # the shape follows the data (and the steps, unless told): on top of "default"
        given = opts.iterations is not None or "max_iters" in opts.overrides or tcfg.max_seconds is not None
        chosen, why = auto_settings(len(data.train), tokenizer.vocab_size, given, len(data.val))
        report(Note(why, settings=("settings",)))
        mcfg, tcfg = with_values(mcfg, tcfg, {k: v for k, v in chosen.items() if k not in opts.overrides})
    mcfg.vocab_size = tokenizer.vocab_size
    fit_warmup(tcfg, opts)
    torch.manual_seed(tcfg.seed)
    return Run(GPT(mcfg).to(device), tokenizer, data, source, mcfg, tcfg)


def fit_warmup(tcfg: TrainConfig, opts: TrainOptions) -> None:
    """A warm-up no shorter than the run never reaches the peak learning rate (`--iters 60` under the
    default's 100 steps of warm-up learned at a fraction of it): a tenth of the run instead, unless given."""
    if tcfg.max_iters is not None and tcfg.warmup_iters >= tcfg.max_iters and "warmup_iters" not in opts.overrides:
        longer, tcfg.warmup_iters = tcfg.warmup_iters, max(1, tcfg.max_iters // 10)
        note(f"warm-up of {tcfg.warmup_iters} step{'s' * (tcfg.warmup_iters != 1)}, a tenth of the run's {tcfg.max_iters:,} ({longer} would not "
             "reach the peak learning rate; `warmup_iters` sets it)", settings=("warmup_iters",))


def with_values(mcfg: ModelConfig, tcfg: TrainConfig, values: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The configs with these fields set (each to a value of its type), checked together."""
    model_values, train_values = split_overrides(values)
    mcfg, tcfg = dataclasses.replace(mcfg, **model_values), dataclasses.replace(tcfg, **train_values)
    check_configs(mcfg, tcfg)
    return mcfg, tcfg


def _warn_of_a_preset_left_out(opts: TrainOptions, loaded: LoadedModel, report: Listener | None) -> None:
    """A preset given with `load` (`-l MODEL -s hyper`) trained MODEL on as it was, without a word; an
    imported model (no training settings of its own) takes the preset's."""
    if opts.settings != "default" and "train" in loaded.meta and report is not None:
        report(Note(f"warning: `settings` {opts.settings} does not apply here: {opts.load} keeps its own shape and "
                    "training settings (each setting's own option changes one)", "warning", ("settings",)))


def resumed_run(opts: TrainOptions, device: torch.device, report: Listener | None = None, grows: bool = False) -> Run:
    """A saved model with its optimiser state, its tokenizer, and its data unless other data is given.
    A folder saved without optimiser state (an imported or shipped model) is fine-tuned: its weights
    are the start of a new run with a fresh optimiser; so is one whose vocabulary `grows` (text_data)."""
    saved = _config_of(Path(opts.load))
    # A first chat fine-tune adds tokens to the vocabulary, so no saved optimiser state fits any more
    first_chat = opts.data is not None and opts.data.kind == "chat" and not isinstance(saved.get("chat"), dict)
    # A LoRA run saved merged weights: the optimiser state of its adapters fits nothing any more
    fine_tune = (grows or not (Path(opts.load) / "trainer_state").is_dir() or first_chat or bool(opts.lora)
                 or "lora" in saved)
    loaded = load_model_dir(opts.load, device, with_trainer=not fine_tune)
    if opts.tokenizer and tokenizer_class(opts.tokenizer).name != loaded.tokenizer.name:
        raise RepytilianError(
            f"{opts.load} was trained with the {loaded.tokenizer.name!r} tokenizer, not {opts.tokenizer!r}; "
            f"leave `tokenizer` out (or give `tokenizer` {loaded.tokenizer.name}) to continue it", ("tokenizer",)
        )
    _warn_of_a_preset_left_out(opts, loaded, report)
    if fine_tune and "train" not in loaded.meta:  # imported: the training settings of -s and -i
        _, preset = build_configs(opts.settings, "default", {}, "classic")
        loaded.meta["train"] = dataclasses.asdict(preset)
    mcfg, tcfg = _resume_setup(opts, loaded)
    # The from-scratch peak and floor of the learning rate, also where the folder was a fine-tune
    # itself (its own were a share of them: a fine-tune of a fine-tune would take a share of a share)
    lineage = loaded.meta.get("fine_tuned") if isinstance(loaded.meta.get("fine_tuned"), dict) else None
    if fine_tune:
        saved_rates = [loaded.meta["train"].get("learning_rate", tcfg.learning_rate),
                       loaded.meta["train"].get("min_lr", tcfg.min_lr)]
        lineage = {"from": str(opts.load), "learning_rates": (lineage or {}).get("learning_rates") or saved_rates}
    if fine_tune and "learning_rate" not in opts.overrides:
        # Pretrained weights are near a good solution: a tenth of the from-scratch peak keeps them
        # there; learning to take turns (new tokens, a new format) takes half of it (measured on a
        # tiny model: a persona learned in 200 steps at half, not at a tenth)
        share = 2 if first_chat else 10
        peak, floor = lineage["learning_rates"]
        tcfg.learning_rate, tcfg.min_lr = peak / share, floor / share
    if fine_tune and "dtype" not in opts.overrides:
        # A new run on this machine: the number format is this machine's choice, not the one the
        # model was trained in elsewhere (bf16 on a CPU without it is about 100x slower)
        tcfg.dtype = "auto"
    given = [k for k, v in opts.tokenizer_options.items() if v is not None]
    if given:
        raise SettingError(given[0], "cannot be given when continuing a saved model: its tokenizer cannot change")
    if fine_tune:  # a new run's dropout masks come from its seed, as a fresh run's do (an exact resume has its own)
        torch.manual_seed(tcfg.seed)
    saved_source = loaded.meta.get("data", {}).get("source", {"kind": "dataset", "value": "shakespeare"})
    source = opts.data or DataSource.from_dict(saved_source)
    if source.kind == "chat":
        data = _chat_data(opts, loaded, source, tcfg, fine_tune)
        return Run(loaded.model, loaded.tokenizer, data, source, mcfg, tcfg, loaded, fine_tuned=lineage)
    corpus = load_corpus(source, loaded.tokenizer.input_format)
    try:
        data = text_data(opts.load, loaded, corpus, fine_tune)
    except _VocabularyGrows:
        return resumed_run(opts, device, grows=True)
    if fine_tune and opts.data is not None and not _told_how_long(opts):
        _fit_steps_to_text(tcfg, opts, len(data.train), mcfg.block_size)
    if fine_tune:
        fit_warmup(tcfg, opts)
    return Run(loaded.model, loaded.tokenizer, data, source, mcfg, tcfg, loaded, fine_tuned=lineage)


def _told_how_long(opts: TrainOptions) -> bool:
    return opts.iterations is not None or bool({"max_iters", "max_seconds"} & set(opts.overrides))


def _fit_steps_to_text(tcfg: TrainConfig, opts: TrainOptions, train_tokens: int, block_size: int) -> None:
    """A fine-tune on other text, not told how long: FINE_TUNE_PASSES over it (at least
    FINE_TUNE_MIN_STEPS, at most the steps the model was first trained for), not the first run's
    steps, which went 20 times over Tiny Shakespeare and would go a thousand over a short story."""
    per_step = tcfg.batch_size * block_size
    steps = max(FINE_TUNE_MIN_STEPS, math.ceil(FINE_TUNE_PASSES * train_tokens / per_step))
    tcfg.max_iters = min(tcfg.max_iters or steps, steps)
    _shorter_schedule(tcfg, opts)
    note(f"a fine-tune on other text takes {tcfg.max_iters:,} steps: {FINE_TUNE_PASSES} passes over it, at least "
         f"{FINE_TUNE_MIN_STEPS} steps, at most the first run's (`max_iters` or `max_seconds` sets it)",
         settings=("max_iters", "max_seconds"))


def _shorter_schedule(tcfg: TrainConfig, opts: TrainOptions) -> None:
    """Warm-up and evaluations in proportion to a fine-tune's fewer steps, where not given."""
    for name, share in (("warmup_iters", 10), ("eval_interval", 5)):
        if name not in opts.overrides:
            setattr(tcfg, name, min(getattr(tcfg, name), max(1, tcfg.max_iters // share)))


class _VocabularyGrows(Exception):
    """New tokens for a model loaded with its optimiser state, which fits the old vocabulary only."""


# What a text's tokens are, for the tokenizers whose vocabulary grows
GROWS = {CharacterTokenizer: ("characters", set), WordTokenizer: ("words", split_words),
         SpacedWordTokenizer: ("words", str.split)}


def text_data(load: str, loaded: LoadedModel, corpus: str | TextFiles | JsonCorpus, fine_tune: bool) -> TokenData:
    """The text's ids in the loaded model's vocabulary. A characters or words model given text with
    tokens it has never seen (Tiny Shakespeare has no digits but 3, no brackets, no accents) takes
    them as new tokens, with rows of its embeddings, as a chat's special tokens are added: so any
    text can fine-tune a shipped model. Other tokenizers' unknown tokens are an error (a byte-level
    BPE has none; specials own the ids after a vocabulary)."""
    try:
        return TokenData.from_corpus(corpus, loaded.tokenizer)
    except UnknownTokensError as e:
        tokenizer = loaded.tokenizer
        if type(tokenizer) not in GROWS or isinstance(corpus, JsonCorpus):
            raise RepytilianError(f"the training data does not fit the vocabulary of {load}: {e}") from None
    if not fine_tune:
        raise _VocabularyGrows
    add_new_tokens(load, loaded, corpus.chunks() if isinstance(corpus, TextFiles) else text_chunks(corpus))
    return TokenData.from_corpus(corpus, loaded.tokenizer)


def add_new_tokens(load: str, loaded: LoadedModel, texts: Iterable[str]) -> None:
    """The loaded model's tokenizer (one of GROWS) with the tokens of `texts` it lacks, after its own,
    and the model's embeddings with a row for each, starting as the average of the others."""
    tokenizer = loaded.tokenizer
    what, tokens_of = GROWS[type(tokenizer)]
    seen: set[str] = set()
    for piece in texts:
        seen.update(tokens_of(piece))
    new = sorted(seen - set(tokenizer.itos))
    if not new:
        return
    old = tokenizer.vocab_size
    loaded.tokenizer = type(tokenizer)(tokenizer.itos + new)
    loaded.model.grow_vocabulary(loaded.tokenizer.vocab_size)
    loaded.meta["grown"] = len(new)
    shown = ", ".join(repr(c) for c in new[:12]) + (f" and {len(new) - 12:,} more" if len(new) > 12 else "")
    note(f"added the text's {len(new):,} new {what} ({shown}) to the {tokenizer.name} tokenizer of {load} "
         f"(ids {old}-{loaded.tokenizer.vocab_size - 1}); each starts as the average of the others")


def _config_of(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # loading the folder says what is wrong with it
    return config if isinstance(config, dict) else {}


def _chat_data(opts: TrainOptions, loaded: LoadedModel, source: DataSource, tcfg: TrainConfig,
               fine_tune: bool) -> ChatData:
    """A chat fine-tune's data: the model's tokenizer gets the chat format's tokens (and its
    embeddings rows for them), the conversations are rendered in it. A first fine-tune that is
    not told how long to train goes over the conversations CHAT_EPOCHS times."""
    read = read_chat(source.value, source.chat_val)
    if type(loaded.tokenizer) in GROWS:  # a first chat fine-tune: the conversations' new characters (or words),
        train, val = read[:2]            # before the chat's own tokens
        add_new_tokens(opts.load, loaded, (content for c in train + val for _, content in c.messages))
    tokenizer, chat = with_chat_tokens(loaded.tokenizer)
    if tokenizer.vocab_size != loaded.model.config.vocab_size:
        added = tokenizer.vocab_size - loaded.model.config.vocab_size
        loaded.model.grow_vocabulary(tokenizer.vocab_size)
        note(f"added the chat format's {added} special tokens (ids {tokenizer.vocab_size - added}-"
             f"{tokenizer.vocab_size - 1}) to the {tokenizer.name} tokenizer of {opts.load}")
    loaded.tokenizer = tokenizer
    data = chat_data(source.value, source.chat_val, tokenizer, chat, loaded.model.config.block_size, read)
    if fine_tune and not _told_how_long(opts):
        epochs = math.ceil(CHAT_EPOCHS * data.train.conversations / tcfg.batch_size)
        tcfg.max_iters = min(CHAT_MAX_STEPS, max(CHAT_MIN_STEPS, epochs))
        _shorter_schedule(tcfg, opts)
        note(f"{data.train.conversations:,} conversation{'s' * (data.train.conversations > 1)} to learn from ({data.train.learned_tokens:,} answer tokens), "
             f"{data.val.conversations:,} to validate on: {tcfg.max_iters:,} steps of {tcfg.batch_size} go over them "
             f"{tcfg.max_iters * tcfg.batch_size / data.train.conversations:.0f} times (`max_iters` sets it)",
             settings=("max_iters",))
    return data


def fingerprint(run: "Run") -> str:
    """What every process must have prepared alike: the data's text, the tokenizer's ids for it."""
    head = run.data.train[:100_000]
    return f"{run.data.sha256}:{len(run.data.train)}:{len(run.data.val)}:{run.tokenizer.vocab_size}:" + \
        hashlib.sha256(head.astype("int64").tobytes()).hexdigest()
