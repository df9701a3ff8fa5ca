"""Dropout of the embeddings and the residual branches in one pass on a CPU: fused_attention.c's
`dropout_apply`, loaded with the attention's kernel.

dropout.py draws a mask from torch's generator, stores it for the backward pass, and applies it in
a `where`: four passes over memory and a random draw for every four values. In a bf16 step at the
`v3c` shape that made dropout on the embeddings and residual branches alone 1.14x the step
(Xeon with AMX, 2026-12-03, benchmarks/bench_dropout.py). Here one pass reads the values and
writes them kept or zeroed, each pair of values kept by a hash of its place and one seed from torch's
generator (so a resumed run draws the same masks), and the backward pass is the same call on the
gradient with the same seed: nothing is stored. Same rule as dropout.py's: a value is kept where
its 16-bit draw is at least round(p * 65536), and scaled by the exact inverse of the share kept.
`keep_mask` is the same mask in Python, for tests.
"""
from __future__ import annotations

import torch

from . import fused_attention as native

_TAKES = (torch.float32, torch.bfloat16)


def usable(x: torch.Tensor, p: float) -> bool:
    """Whether `hashed_dropout` takes x: float32 or bf16 on a CPU, the library loaded."""
    return native._ready and x.device.type == "cpu" and x.dtype in _TAKES and 0 < native._dropped(p) < native._LEVELS


def hashed_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """dropout.dropout(x, p) with its mask from one random number of torch's generator."""
    seed = torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64)
    return torch.ops.repytilian.hashed_dropout(x, float(p), seed)


def keep_mask(seed: int, n: int, p: float) -> torch.Tensor:
    """The n values' mask that `dropout_apply` draws for `seed` (its hash in torch's int64
    arithmetic), flattened: for tests, and as the definition in Python."""
    seed &= (1 << 64) - 1
    pairs = torch.arange((n + 1) // 2, dtype=torch.int64)
    h = native._mix32(native._mix32((pairs & native._M32) ^ (seed & native._M32))
                      ^ native._times32(pairs >> 32, 0x9E3779B9) ^ (seed >> 32))
    draws = torch.stack((h & 0xFFFF, h >> 16), dim=1).flatten()[:n]
    return draws >= native._dropped(p)


@torch.library.custom_op("repytilian::hashed_dropout", mutates_args=())
def _apply(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    native._lib.dropout_apply(x.numel(), *native.common(p, seed), x.data_ptr(), out.data_ptr(),
                              int(x.dtype == torch.bfloat16))
    return out


@_apply.register_fake
def _(x, p, seed):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output) -> None:
    _, ctx.p, seed = inputs
    ctx.save_for_backward(seed)


def _gradient(ctx, grad):
    (seed,) = ctx.saved_tensors
    return torch.ops.repytilian.hashed_dropout(grad, ctx.p, seed), None, None


_apply.register_autograd(_gradient, setup_context=_save)
