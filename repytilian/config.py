"""Configuration as data: the training dataclass, the named presets, and CLI-style overrides.

`-s/--settings` presets set the model's shape and the optimiser's values; `-i/--iterations`
presets set how long to train. A preset is only a dict of overrides on the dataclass defaults,
so every field can also be set by name (`--set n_layer=6`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from .errors import RepytilianError
from .model import ModelConfig


@dataclass
class TrainConfig:
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_lr: float = 2e-4  # the end of the cosine decay
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    max_iters: int | None = 2000  # None trains until stopped (constant LR after warm-up)
    eval_interval: int = 500
    eval_iters: int = 20  # batches per periodic estimate; the final evaluation uses the whole split
    seed: int = 1337
    dtype: str = "auto"  # float32, bfloat16, float16 (CUDA), or auto: measured once, then stored
    compile: bool = False  # torch.compile the model (falls back to eager with a warning if it fails)
    optimizer: str = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the rest (optim.py)
    max_seconds: float | None = None  # a training-time budget; the LR schedule then follows time
    checkpoint_every: int | None = None  # save the full state every this many steps...
    checkpoint_minutes: float | None = None  # ...and/or every this many minutes

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"the number of iterations must be at least 1, got {self.max_iters}")
        if self.learning_rate <= 0 or self.min_lr < 0:
            raise ValueError("learning_rate must be > 0 and min_lr >= 0")
        for name in ("warmup_iters", "eval_interval", "eval_iters"):
            if getattr(self, name) < (1 if name != "warmup_iters" else 0):
                raise ValueError(f"{name} is out of range: {getattr(self, name)}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must not be negative")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.optimizer == "muon" and self.dtype == "float16":
            raise ValueError("--optimizer muon does not work with float16 (its gradient scaler); use bfloat16")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 step, got {self.checkpoint_every}")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be more than 0, got {self.checkpoint_minutes}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"the time budget must be more than 0 seconds, got {self.max_seconds}")


# -s presets: model shape plus the optimiser values that suit it.
SETTINGS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU recipe (its shape, and no biases, as nanoGPT's default): a smoke test in
    # seconds, or a baseline to compare with.
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                 batch_size=12, learning_rate=1e-3, min_lr=1e-4, beta2=0.99),
    # Chosen by measurement for a 2-core CPU: the most loss per minute at a few minutes' budget.
    # (measured: val loss 1.68 on Tiny Shakespeare after 2,600 steps, 1.82 after 1,300).
    "default": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                    batch_size=16, learning_rate=2e-3, min_lr=2e-4, beta2=0.99),
    # For short time budgets (`-s speedrun --budget 90`): fewer layers for more steps, a higher LR,
    # a short warm-up, and Muon. Measured at 90 s on 2 cores with AdamW: val 1.73 (3 layers, lr 3e-3)
    # against 1.74 (4 layers, lr 3e-3), 1.82 (the default's lr 2e-3) and 1.88 (context 128, batch
    # 8); Muon then took the 3-layer model from about 1.70 to 1.63 (README, Benchmarks).
    "speedrun": dict(n_layer=3, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                     batch_size=16, learning_rate=3e-3, min_lr=3e-4, beta2=0.99, warmup_iters=50,
                     optimizer="muon"),
    # The lecture's model: 6 layers, 6 heads, 384 wide, context 256 (10.7M parameters).
    "hyper": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                  batch_size=64, learning_rate=1e-3, min_lr=1e-4, beta2=0.99),
}

# -i presets: how long to train and how often to evaluate.
ITERATIONS: dict[str, dict[str, Any]] = {
    "quick": dict(max_iters=50, eval_interval=25, eval_iters=5, warmup_iters=10),
    "default": dict(max_iters=2000, eval_interval=250, eval_iters=20, warmup_iters=100),
    "long": dict(max_iters=10000, eval_interval=1000, eval_iters=50, warmup_iters=200, checkpoint_minutes=10),
    "forever": dict(max_iters=None, eval_interval=1000, eval_iters=50, warmup_iters=200, checkpoint_minutes=10),
}

MODEL_FIELDS = {f.name for f in fields(ModelConfig)} - {"vocab_size"}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


# Architectures (model fields on top of any -s preset). "classic" is the lecture's GPT (GPT-2's
# layout; biases as the preset says: GPT-2 has them, nanoGPT's `tiny` recipe not); "modern" swaps
# in what later GPTs use, chosen by measurement (README, "Architecture").
ARCHS: dict[str, dict[str, Any]] = {
    "classic": {"position": "learned", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True},
    "modern": {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False,
               "tie_embeddings": True},
}


def _lookup(presets: dict[str, dict[str, Any]], name: str, flag: str) -> dict[str, Any]:
    try:
        return presets[name]
    except KeyError:
        raise RepytilianError(f"unknown {flag} preset {name!r}; choose one of: {', '.join(presets)}") from None


def _type_name(target: type | str) -> str:
    text = str(target)
    for name in ("bool", "int", "float"):  # bool first: str(bool) does not contain "int", but be explicit
        if name in text:
            return name
    return "str"


def _convert(name: str, value: Any, target: type | str) -> Any:
    """Turn a CLI string into the field's type ('none' allowed where the field is optional)."""
    if not isinstance(value, str):
        return value
    if "None" in str(target) and value.lower() in ("none", "forever"):
        return None
    kind = _type_name(target)
    try:
        if kind == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise RepytilianError(f"{name}={value!r} is not a valid {kind}") from None
    return value


def parse_set_options(pairs: list[str]) -> dict[str, str]:
    """`["n_layer=6", "lr=1e-3"]` -> {"n_layer": "6", "learning_rate": "1e-3"}."""
    out: dict[str, str] = {}
    aliases = {"lr": "learning_rate", "iters": "max_iters", "batch": "batch_size", "block": "block_size"}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = aliases.get(key.strip(), key.strip())
        if not sep or not key:
            raise RepytilianError(f"--set expects NAME=VALUE, got {pair!r}")
        if key not in MODEL_FIELDS | TRAIN_FIELDS:
            known = ", ".join(sorted(MODEL_FIELDS | TRAIN_FIELDS))
            raise RepytilianError(f"--set: unknown setting {key!r}; known settings: {known}")
        out[key] = value.strip()
    return out


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Typed (model, train) overrides from a flat dict of names to values or CLI strings."""
    types = {f.name: f.type for f in fields(ModelConfig)} | {f.name: f.type for f in fields(TrainConfig)}
    model_over, train_over = {}, {}
    for key, value in overrides.items():
        if value is None and key != "max_iters":
            continue
        typed = _convert(key, value, types[key])
        (model_over if key in MODEL_FIELDS else train_over)[key] = typed
    return model_over, train_over


def build_configs(
    settings: str = "default", iterations: str = "default", overrides: dict[str, Any] | None = None,
    arch: str = "classic",
) -> tuple[ModelConfig, TrainConfig]:
    """The model config (vocab_size still to be filled in from the tokenizer) and the train config."""
    # Settings win where both set a field (speedrun pins its short warm-up whatever -i says).
    values = {**_lookup(ITERATIONS, iterations, "-i/--iterations"), **_lookup(SETTINGS, settings, "-s/--settings"),
              **_lookup(ARCHS, arch, "--arch")}
    model_over, train_over = split_overrides(overrides or {})
    model_values = {k: v for k, v in values.items() if k in MODEL_FIELDS} | model_over
    train_values = {k: v for k, v in values.items() if k in TRAIN_FIELDS} | train_over
    mcfg, tcfg = ModelConfig(**model_values), TrainConfig(**train_values)
    check_configs(mcfg, tcfg)
    return mcfg, tcfg


def check_configs(mcfg: ModelConfig, tcfg: TrainConfig) -> None:
    try:
        # vocab_size is only known later; check the rest with a placeholder.
        dataclasses.replace(mcfg, vocab_size=max(mcfg.vocab_size, 1)).validate()
        tcfg.validate()
    except ValueError as e:
        raise RepytilianError(f"invalid settings: {e}") from None
