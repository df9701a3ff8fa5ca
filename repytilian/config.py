"""Configuration as data: the model and training dataclasses, the named presets, each list of
choices once, and typed overrides.

`-s/--settings` presets set the model's shape and the optimiser's values; `-i/--iterations`
presets set how long to train. A preset is only a dict of overrides on the dataclass defaults,
so every field can also be set by name, with a value of the field's type (the library takes typed
values only: the command line turns its text into them, cli/flags.py). A field's `help` and its
`argument` metadata (choices, metavar, minimum) describe it to people; which fields have a
command-line flag of their own, and which flag, is the command line's (cli/flags.FIELD_FLAGS).

This module imports no torch, so the command line can build its parsers (and answer --help) fast.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from .errors import RepytilianError, SettingError

DEFAULT_MODEL_DIR = "models/shakespeare/basic"
ACTIVATION_NAMES = ("gelu", "relu", "relu2", "swiglu", "gelu_tanh")  # model.ACTIVATIONS maps them to functions
POSITIONS = ("learned", "rope", "none")  # none: the lecture's bigram model sees no positions
NORMS = ("layernorm", "rmsnorm", "none")  # none: the lecture's steps before LayerNorm
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "muon")
RMS_EPS = 1e-6  # Llama's
ROPE_THETA = 10000.0
DEFAULT_TEMPERATURE = 0.8  # sampling's defaults (sampling.py, the CLI's help, Hugging Face exports)
DEFAULT_TOP_K = 200


def setting(default: Any, help: str = "", **argument: Any) -> Any:
    """A config field described for people (`argument`: choices, metavar, minimum)."""
    return dataclasses.field(default=default, metadata={"help": help, **argument})


@dataclass
class ModelConfig:
    vocab_size: int = 65
    block_size: int = setting(128, "context length in tokens", minimum=1)  # the longest context
    n_layer: int = setting(4, "transformer blocks", minimum=1)
    n_head: int = setting(4, "attention heads per block", minimum=1)
    n_embd: int = setting(128, "width of the residual stream", minimum=1)
    dropout: float = setting(0.0, "dropout probability")
    # 0 keeps the attention weights whole and drops out elsewhere: better for short runs, worse for
    # long ones (docs/benchmarks.md); on a CPU without a C compiler it also keeps dropout cheap
    attention_dropout: float | None = setting(None, "dropout probability of the attention weights "
                                              "(default: the dropout probability)", metavar="P")
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    activation: str = "gelu"  # of the MLP: gelu, relu (the lecture's first model), relu2, swiglu (Llama), gelu_tanh (OpenAI's GPT-2)
    tie_embeddings: bool = True  # the output head shares the token embedding's matrix
    head_bias: bool = False  # a bias on the output head (only the original Repytilian's models have one)
    position: str = "learned"  # position embeddings (GPT-2), or "rope": rotary, applied to queries and keys
    norm: str = "layernorm"  # or "rmsnorm" (no mean, no bias)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    # each layer's attention values get a learned vector of each token added, its size learned per
    # layer (one table shared by the layers): a shortcut to what the tokens are at any depth
    value_embeddings: bool = False
    # The lecture's steps towards the GPT (--arch bigram, one-head, ...); both True in a GPT
    residual: bool = True  # each block adds its branches to the stream (x = x + f(x)), not replaces it
    mlp: bool = True  # each block has a feed-forward layer after its attention

    @property
    def attention_p(self) -> float:
        """The dropout probability of the attention weights."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def mlp_hidden(self) -> int:
        """The MLP's inner width: 4x, or for the gated swiglu (three matrices, not two) 8/3x
        rounded up to a multiple of 32, which keeps the parameter count."""
        if self.activation == "swiglu":
            return 32 * math.ceil(8 * self.n_embd / 3 / 32)
        return 4 * self.n_embd

    def validate(self) -> None:
        """Raise ValueError for shapes no model can have (the CLI turns this into a clear error)."""
        for name in ("vocab_size", "block_size", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_layer < 0 or (self.n_layer == 0 and self.position != "none"):
            raise ValueError(f"n_layer must be at least 1 (0 only for the bigram model), got {self.n_layer}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        for name, allowed in (("activation", ACTIVATION_NAMES), ("position", POSITIONS), ("norm", NORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.n_embd // self.n_head}")


@dataclass
class TrainConfig:
    batch_size: int = setting(16, "sequences per optimizer step, over all processes and micro-batches (what a "
                              "step learns from)", minimum=1)
    grad_accum: int | None = setting(None, "micro-batches per step on each process (default: as few as fit in "
                                     "memory); the step still learns from batch_size sequences, as one batch",
                                     metavar="N", minimum=1)
    micro_batch: int | None = setting(None, "sequences per forward pass on each process (the other way to say "
                                      "grad_accum: batch_size / (processes x micro_batch) micro-batches)",
                                      metavar="N", minimum=1)
    learning_rate: float = setting(2e-3, "peak learning rate")
    min_lr: float = 2e-4  # the end of the cosine decay
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # None trains until stopped (constant LR after warm-up)
    max_iters: int | None = setting(2000, "number of training steps", minimum=1)
    eval_interval: int = setting(500, "steps between evaluations", minimum=1)
    eval_iters: int = 20  # batches per periodic estimate; the final evaluation uses the whole split
    seed: int = 1337
    dtype: str = setting("auto", "training precision (default auto: bf16 autocast where native and measured "
                         "faster)", choices=DTYPE_CHOICES)  # auto is measured once, then stored
    compile: bool | None = setting(None, "torch.compile the model (training: default on CUDA GPUs, measured on CPUs; "
                                   "generation: the decoding step built ahead of time, ~30 s the first time for a "
                                   "model, then kept; falls back to eager if it fails)")
    optimizer: str = setting("adamw", "adamw (default), or muon: Muon for the blocks' matrices, AdamW for the rest",
                             choices=OPTIMIZERS)
    keep: str = setting("both", "which models the output folder keeps: both (the last, and the best by val loss in "
                        "best/), last, or best (the best only; it cannot resume exactly)",
                        choices=("both", "last", "best"))
    max_seconds: float | None = setting(None, "a training-time budget: the learning-rate schedule ends when it is "
                                        "spent", metavar="SECONDS")
    long_run_dropout: float | None = setting(None, "dropout everywhere, the attention weights included, from step 4 of "
                                             "a run projected then to see its training text at least 10 times "
                                             "(default: the model's dropout throughout)")
    checkpoint_every: int | None = setting(None, "save the full training state every this many steps (into the "
                                           "output folder)", metavar="STEPS", minimum=1)
    checkpoint_minutes: float | None = setting(None, "...and/or every this many minutes (default 10 when the iterations "
                                               "are long or forever)", metavar="MINUTES")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("grad_accum", "micro_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ValueError(f"the number of iterations must be at least 1, got {self.max_iters}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):  # NaN passes every comparison
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.min_lr < 0:
            raise ValueError("learning_rate must be > 0 and min_lr >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("warmup_iters", "eval_interval", "eval_iters"):
            if getattr(self, name) < (1 if name != "warmup_iters" else 0):
                raise ValueError(f"{name} is out of range: {getattr(self, name)}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must not be negative")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be {', '.join(DTYPE_CHOICES[:-1])} or {DTYPE_CHOICES[-1]}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "muon" and self.dtype == "float16":
            raise ValueError("optimizer muon does not work with float16 (its gradient scaler); use dtype bfloat16")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 step, got {self.checkpoint_every}")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be more than 0, got {self.checkpoint_minutes}")
        if self.long_run_dropout is not None and not 0.0 <= self.long_run_dropout < 1.0:
            raise ValueError(f"long_run_dropout must be in [0, 1), got {self.long_run_dropout}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"the time budget must be more than 0 seconds, got {self.max_seconds}")


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """A field's type, read from its annotation (not its text): (bool/int/float/str, whether None is allowed)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


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
    # 8); Muon then took the 3-layer model from about 1.70 to 1.63 (docs/benchmarks.md).
    "speedrun": dict(n_layer=3, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                     batch_size=16, learning_rate=3e-3, min_lr=3e-4, beta2=0.99, warmup_iters=50,
                     optimizer="muon"),
    # The lecture's model: 6 layers, 6 heads, 384 wide, context 256 (10.7M parameters).
    "hyper": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                  batch_size=64, learning_rate=1e-3, min_lr=1e-4, beta2=0.99),
    # The most quality in a quarter of an hour of training on 2 cores (`-s quarter`: 15 minutes unless
    # --budget says otherwise): the shipped v3c's shape, layout and optimiser, with dropout on
    # the embeddings and the residual branches but not on the attention weights, whose dropout slows
    # a run this short (1.5013 against 1.5204 at the same steps), and QK-norm (0.014 and 0.017 better
    # in two pairs of runs, at every evaluation on the way; exported as Qwen3): docs/benchmarks.md.
    # Where a CPU is fast enough for the run to see its text 10 times or more (native bf16: 20), the
    # model over-fits instead, and dropout 0.15 everywhere pays (1.4573 against 1.4808; runs/long_run.py).
    # Context 256 in batches of 16 (v3c's 4,096 tokens a step): 1.4474 against 1.4576 at context 128
    # on native bf16, 1.4592 against 1.4663 on an AVX2-only CPU, for about 10% fewer steps.
    "quarter": dict(arch="modern", n_layer=6, n_head=6, n_embd=144, block_size=256, batch_size=16, dropout=0.1,
                    attention_dropout=0.0, qk_norm=True, learning_rate=3e-3, min_lr=3e-4, beta2=0.99,
                    warmup_iters=100, optimizer="muon", max_seconds=900.0, eval_interval=500,
                    long_run_dropout=0.15),
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
# in what later GPTs use, chosen by measurement (docs/benchmarks.md).
# The lecture's steps, from the bigram table to the GPT (`repytilian ladder` trains each in turn):
# what each adds is in LECTURE_STEPS. The table is kept as two matrices (wte, lm_head untied), whose
# product can be any vocab x vocab table when n_embd is at least the vocabulary.
_BEFORE_BLOCKS = {"n_layer": 1, "residual": False, "mlp": False, "norm": "none", "dropout": 0.0,
                  "position": "learned", "tie_embeddings": False}
LECTURE_STEPS: dict[str, dict[str, Any]] = {
    "bigram": {"n_layer": 0, "position": "none", "norm": "none", "tie_embeddings": False, "dropout": 0.0},
    "one-head": {**_BEFORE_BLOCKS, "n_head": 1},
    "multi-head": {**_BEFORE_BLOCKS, "n_head": 4},
    "feed-forward": {**_BEFORE_BLOCKS, "n_head": 4, "mlp": True},
    "blocks": {"residual": True, "mlp": True, "norm": "layernorm", "dropout": 0.0, "tie_embeddings": False},
}
LECTURE_STEP_ABOUT = {
    "bigram": "a table of next-token scores, read by the current token alone",
    "one-head": "+ positions and one head of self-attention: tokens look back at each other",
    "multi-head": "+ several heads side by side, each a slice of the width",
    "feed-forward": "+ a feed-forward layer: each token thinks about what it gathered",
    "blocks": "+ several blocks with residual connections and LayerNorm",
    "classic": "+ dropout: the GPT",
}
ARCHS: dict[str, dict[str, Any]] = {
    **LECTURE_STEPS,
    "classic": {"position": "learned", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True,
                "qk_norm": False},  # GPT-2's, even over a preset that normalises queries and keys (quarter)
    "modern": {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False,
               "tie_embeddings": True},
}


def _lookup(presets: dict[str, dict[str, Any]], name: str, flag: str, more: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset `name`; an unknown name is an error listing the choices (`more`: names handled elsewhere)."""
    try:
        return presets[name]
    except KeyError:
        choices = ", ".join([*presets, *more])
        raise RepytilianError(f"unknown `{flag}` preset {name!r}; choose one of: {choices}", (flag,)) from None


def field_of(name: str) -> tuple[type, dataclasses.Field]:
    """(config class, field) of a setting's name; a SettingError for a name no config has."""
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if f.name == name:
                return cls, f
    known = sorted(MODEL_FIELDS | TRAIN_FIELDS)
    meant = difflib.get_close_matches(str(name), known, 1)
    if meant:  # n_layers, learningrate: the one meant, not a list of 38
        raise SettingError(name, f"is not a setting; did you mean {meant[0]}?")
    raise SettingError(name, f"is not a setting; the settings are: {', '.join(known)}")


def typed(name: str, value: Any) -> Any:
    """`value` checked against the field's annotation (an int is a float's value too); a string for
    a number or a yes/no is refused: text is turned into values by whoever reads it (cli/flags.py)."""
    cls, _ = field_of(name)
    kind, optional = field_type(cls, name)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    article = "an" if kind is int else "a"
    raise SettingError(name, f"must be {'None or ' if optional else ''}{article} {kind.__name__}, got {value!r}")


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, train) overrides from a flat dict of setting names to values of their types."""
    model_over, train_over = {}, {}
    for key, value in overrides.items():
        if value is None and key != "max_iters":
            continue
        (model_over if key in MODEL_FIELDS else train_over)[key] = typed(key, value)
    return model_over, train_over


# -s auto: shapes from small to large (layers, heads, width, context, batch, learning rate); the
# largest that still has at least one training token per parameter is taken.
AUTO_SHAPES = ((1, 2, 32, 32, 16, 3e-3), (2, 2, 64, 64, 16, 3e-3), (4, 4, 128, 64, 16, 2e-3), (4, 4, 192, 128, 32, 1.5e-3),
               (6, 6, 256, 128, 32, 1e-3), (6, 6, 384, 256, 64, 1e-3))
AUTO_EPOCHS = 10  # without a step or time budget, -s auto trains on each token about this many times


def approx_params(n_layer: int, n_embd: int, block_size: int, vocab_size: int) -> int:
    """A GPT's parameters: 12 d^2 a block (attention 4 d^2, MLP 8 d^2) and the embeddings."""
    return 12 * n_layer * n_embd ** 2 + (vocab_size + block_size) * n_embd


def auto_settings(train_tokens: int, vocab_size: int, steps_given: bool,
                  val_tokens: int | None = None) -> tuple[dict[str, Any], str]:
    """-s auto: a shape for the data's size (and steps, unless -i, --iters or --budget say), and why.
    The context fits both splits (a window needs a context and one more token): a power of two."""
    fitting = [s for s in AUTO_SHAPES if approx_params(s[0], s[2], s[3], vocab_size) <= train_tokens] or [AUTO_SHAPES[0]]
    n_layer, n_head, n_embd, block, batch, lr = fitting[-1]
    shortest = min(train_tokens, val_tokens if val_tokens is not None else train_tokens)
    while block > 1 and block >= shortest:  # 254 train, 28 val tokens: a context of 16, not 32
        block //= 2
    params = approx_params(n_layer, n_embd, block, vocab_size)
    per_param = train_tokens / params
    chosen = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block, "batch_size": batch,
              "learning_rate": lr, "min_lr": lr / 10, "dropout": 0.1 if per_param < 10 else 0.0}
    why = (f"`settings` auto: {train_tokens:,} training tokens, so {n_layer} layer{'s' * (n_layer != 1)} x "
           f"{n_head} head{'s' * (n_head != 1)} x {n_embd} wide, context {block} "
           f"(about {params / 1e6:.2f}M parameters, {per_param:.{1 if per_param >= 0.1 else 3}f} tokens each)"
           + (", dropout 0.1" if chosen["dropout"] else "")
           + ("; the smallest shape: the text is small for any GPT" if per_param < 1 else ""))
    if not steps_given:
        steps = max(200, min(20_000, round(AUTO_EPOCHS * train_tokens / (batch * block))))
        chosen["max_iters"] = steps
        why += f"; {steps:,} steps (each token seen about {steps * batch * block / train_tokens:.0f} times)"
    return chosen, why


def build_configs(
    settings: str = "default", iterations: str = "default", overrides: dict[str, Any] | None = None,
    arch: str | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """The model config (vocab_size still to be filled in from the tokenizer) and the train config.
    `arch` None: the settings preset's own (`quarter`: modern), else classic."""
    # Settings win where both set a field (speedrun pins its short warm-up whatever -i says).
    preset = dict(_lookup(SETTINGS, settings, "settings", ("auto",)))  # auto: fitted to the data (runs/assemble.py)
    own_arch = preset.pop("arch", "classic")
    values = {**_lookup(ITERATIONS, iterations, "iterations"), **preset, **_lookup(ARCHS, arch or own_arch, "arch")}
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
