"""Library settings in the command line's words: the flag of each setting that a message names.

Library errors and notes name settings as the library does, in backquotes (`block_size`,
`data_file`), and list the ones they name (errors.py); here each becomes its flag (--block-size, -d)."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from ..config import (
    MODEL_FIELDS,
    TRAIN_FIELDS,
    ModelConfig,
    TrainConfig,
    field_of,
    field_type,
)
from ..errors import RepytilianError, SettingError

# The config fields with a flag of their own; every field can be set with --set NAME=VALUE.
FIELD_FLAGS = {
    "block_size": "--block-size", "n_layer": "--n-layer", "n_head": "--n-head", "n_embd": "--n-embd",
    "dropout": "--dropout", "attention_dropout": "--attention-dropout", "batch_size": "--batch-size", "grad_accum": "--grad-accum",
    "micro_batch": "--micro-batch", "learning_rate": "--lr", "max_iters": "--iters",
    "eval_interval": "--eval-interval", "dtype": "--dtype", "compile": "--compile", "optimizer": "--optimizer",
    "keep": "--keep", "max_seconds": "--budget", "checkpoint_every": "--checkpoint-every",
    "checkpoint_minutes": "--checkpoint-minutes",
}
SET_ALIASES = {"lr": "learning_rate", "iters": "max_iters", "batch": "batch_size", "block": "block_size"}

# Settings whose flag is not simply --name-with-dashes
FLAGS = {
    "iterations": "-i", "settings": "-s", "data_file": "-d", "data_path": "-p",
    "load": "-l", "out": "-m", "model_dir": "-m", "prompt": "-c", "tokenizer": "-z", "num_samples": "--num-samples",
    "max_time": "--max-time", "models": "--models", "source_format": "--from",
}


def with_our_flags(argv: Sequence[str]) -> list[str]:
    """nanoGPT's way of setting a field, `--batch_size=32` or `--max_iters 500`, in this tool's
    flags (`--batch-size=32`, `--iters 500`), or as `--set NAME=VALUE` for a field without a flag
    of its own (`--warmup_iters=50`, `--beta2=0.99`); anything else as it was."""
    argv, out = list(argv), []
    while argv:
        arg = argv.pop(0)
        name, sep, value = arg[2:].partition("=")
        field = arg.startswith("--") and name in MODEL_FIELDS | TRAIN_FIELDS
        boolean = field and field_type(field_of(name)[0], name)[0] is bool
        ours = FIELD_FLAGS.get(name) == "--" + name or name == "seed"  # `--dropout=0.2`: this tool's flag too
        if not field or (ours and not (sep and boolean)):  # but `--compile=False` is not
            out.append(arg)
            continue
        if not sep and not boolean and argv:  # its value, "-1" too
            sep, value = "=", argv.pop(0)
        flag = FIELD_FLAGS.get(name)
        if flag and not (sep and boolean):
            out.append(flag + sep + value)
        else:  # `--compile=False`, `--warmup_iters=50`: --set reads a value of any field
            out += ["--set", f"{name}={value if sep else 'true'}"]
    return out


# nanoGPT's sample.py settings, as generate.py's flags
SAMPLE_FLAGS = {"start": "-c", "max_new_tokens": "-t", "num_samples": "--num-samples", "out_dir": "-m",
                "top_k": "--top-k"}


def with_sample_flags(argv: Sequence[str]) -> list[str]:
    """generate.py's command line with nanoGPT's sample.py settings (`--start="ROMEO:"`,
    `--max_new_tokens=100`, `--start=FILE:prompt.txt`) as its flags, then `with_our_flags`."""
    out = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and sep and name in SAMPLE_FLAGS:
            flag = SAMPLE_FLAGS[name]
            if name == "start" and value.startswith("FILE:"):
                flag, value = "--prompt-file", value[len("FILE:"):]
            out += [flag, value]
        else:
            out.append(arg)
    return with_our_flags(out)


def flag_fields() -> list[tuple[type, dataclasses.Field]]:
    """(config class, field) of every field with a flag of its own, in declaration order."""
    return [(cls, f) for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls) if f.name in FIELD_FLAGS]


def flag_for(setting: str) -> str:
    """The command-line flag of a library setting (a config field or a sampling option); a config
    field without a flag of its own (`qk_norm`) is set as --set qk_norm=..."""
    flag = FIELD_FLAGS.get(setting) or FLAGS.get(setting)
    if flag is None and setting in MODEL_FIELDS | TRAIN_FIELDS and setting != "seed":  # --seed: every command's
        flag = f"--set {setting}=..."
    return flag or "--" + setting.replace("_", "-")


def value_of(name: str, text: str) -> Any:
    """A setting's value from the command line's text, typed by the field's annotation ('none' or
    'forever' where the field may be None)."""
    cls, _ = field_of(name)
    kind, optional = field_type(cls, name)
    if optional and text.lower() in ("none", "forever"):
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise RepytilianError(f"{name}={text!r} is not a valid {kind.__name__}") from None


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """`--set` pairs as typed settings: `["n_layer=6", "lr=1e-3"]` -> {"n_layer": 6, "learning_rate": 0.001}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = SET_ALIASES.get(key.strip(), key.strip())
        if not sep or not key:
            raise RepytilianError(f"--set expects NAME=VALUE, got {pair!r}")
        if key not in MODEL_FIELDS | TRAIN_FIELDS:
            known = sorted(MODEL_FIELDS | TRAIN_FIELDS)
            meant = difflib.get_close_matches(key, known, 1)
            raise RepytilianError(f"--set: unknown setting {key!r}; " + (f"did you mean {meant[0]}?" if meant else
                                  f"known settings: {', '.join(known)}"))
        out[key] = value_of(key, text.strip())
    return out


def in_flags_text(text: str, settings: tuple[str, ...] | list[str]) -> str:
    """`text` with each setting it names in backquotes (`block_size`) written as its flag."""
    for name in settings:
        text = text.replace(f"`{name}`", flag_for(name))
    return text


def in_flags(error: RepytilianError) -> str:
    """A library error in the command line's words: the settings it names as their flags."""
    text = error.in_terms_of(flag_for(error.setting)) if isinstance(error, SettingError) else str(error)
    return in_flags_text(text, getattr(error, "settings", ()))
