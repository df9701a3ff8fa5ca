"""Which number format training computes in: measured on this machine, never assumed.

float32 weights and optimiser state always; the forward pass may run under autocast in bfloat16
(CPUs with native bf16 and recent GPUs) or float16 (CUDA, with a gradient scaler). On CPUs
without native bf16, bf16 is many times slower, and on any CPU it does not pay for narrow models
(measured: the 128-wide presets gain nothing, the 384-wide `hyper` about 2x), so `auto` times a
few steps of both and keeps the faster. The choice is stored with the model, so a resumed run
computes exactly as before.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .errors import RepytilianError
from .model import GPT

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_MIN_WIDTH = 256
MIN_GAIN = 1.15  # bf16 must be this much faster to be worth its rounding


def autocast(device: torch.device, dtype_name: str):
    amp = DTYPES[dtype_name]
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _time_steps(model: GPT, device: torch.device, dtype_name: str, batch: int) -> float:
    T = model.config.block_size
    x = torch.randint(model.config.vocab_size, (batch, T), device=device)
    best = float("inf")
    for _ in range(3):  # the first is a warm-up
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
    if device.type != "cpu" or model.config.n_embd < BF16_MIN_WIDTH:
        return "float32"  # MPS: float32 is the safe default there (NaN reports with half precision)
    batch = min(batch_size, 4)
    state = torch.get_rng_state()  # measuring must not shift the training's random stream
    was_training = model.training
    model.eval()  # no dropout: the timing needs no randomness
    try:
        fp32 = _time_steps(model, device, "float32", batch)
        bf16 = _time_steps(model, device, "bfloat16", batch)
    finally:
        model.train(was_training)
        torch.set_rng_state(state)
    return "bfloat16" if fp32 / bf16 >= MIN_GAIN else "float32"
