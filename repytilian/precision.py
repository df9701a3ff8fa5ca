"""Which number format training computes in: measured on this machine, never assumed.

float32 weights and optimiser state always; the forward pass may run under autocast in bfloat16
(CPUs with native bf16 and recent GPUs) or float16 (CUDA, with a gradient scaler). On CPUs
without native bf16, bf16 is many times slower, and for very small models its conversions cost
more than its faster matmuls save (measured on a 2-core AVX512-BF16 CPU: the 128-wide presets
train 1.25-1.4x faster in bf16 and reach a lower loss in 90 s, `hyper` about 1.9x faster), so
`auto` times a few steps of both and keeps the faster. The choice is stored with the model, so a
resumed run computes exactly as before.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import torch

from .cpu import cpu_name
from .datasets import cache_dir
from .errors import RepytilianError
from .fileio import atomic_write_bytes
from .model import GPT

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_GAIN = 1.15  # bf16 must be this much faster to be worth its rounding
TIMING_TOKENS = 1024  # per timed step: enough that small models are timed at their real batch size


def autocast(device: torch.device, dtype_name: str):
    amp = DTYPES[dtype_name]
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _time_steps(model: GPT, device: torch.device, dtype_name: str, batch: int) -> float:
    T = model.config.block_size
    x = torch.randint(model.config.vocab_size, (batch, T), device=device)
    best = float("inf")
    for _ in range(4):  # the first is a warm-up
        t0 = time.perf_counter()
        with autocast(device, dtype_name):
            _, loss = model(x, x)
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return best


def resolve_dtype(name: str, device: torch.device, model: GPT, batch_size: int) -> str:
    """The dtype to train in, as a name: `auto` becomes float32, bfloat16 or float16."""
    if name == "float16" and device.type != "cuda":
        raise RepytilianError("--dtype float16 is for CUDA GPUs; use bfloat16 or float32 here")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RepytilianError("this GPU has no bfloat16; use --dtype float16 or float32")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type != "cpu":
        return "float32"  # MPS: float32 is the safe default there (NaN reports with half precision)
    # Small batches are dominated by per-operation overheads, which bf16 adds to: time the real
    # batch where it is cheap, at least 4 rows of a long context otherwise.
    batch = min(batch_size, max(4, TIMING_TOKENS // model.config.block_size))
    key, choices = _choice_key(model, batch), _read_choices()
    if choices.get(key) in ("float32", "bfloat16"):
        return choices[key]
    state = torch.get_rng_state()  # measuring must not shift the training's random stream
    was_training = model.training
    model.eval()  # no dropout: the timing needs no randomness
    try:
        fp32 = _time_steps(model, device, "float32", batch)
        bf16 = _time_steps(model, device, "bfloat16", batch)
    finally:
        model.train(was_training)
        torch.set_rng_state(state)
    choices[key] = "bfloat16" if fp32 / bf16 >= MIN_GAIN else "float32"
    try:
        atomic_write_bytes(cache_dir() / CHOICES_FILE, json.dumps(choices, indent=1).encode())
    except OSError:
        pass  # a read-only cache only costs a measurement next time
    return choices[key]


# The measured choice is remembered per machine and model shape, so that the same seed on the same
# machine trains the same model even when a noisy timing would have tipped the other way.
CHOICES_FILE = "dtype-choices.json"


def _choice_key(model: GPT, batch: int) -> str:
    c = model.config
    shape = (f"{c.n_layer}x{c.n_embd}/{c.n_head} T{c.block_size} B{batch} vocab {c.vocab_size} {c.activation} "
             f"{c.position} {c.norm}{' qk_norm' if c.qk_norm else ''}")
    return f"{cpu_name()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads, torch {torch.__version__}: {shape}"


def _read_choices() -> dict:
    try:
        choices = json.loads((cache_dir() / CHOICES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}

