"""Dropout with cheap masks: the lecture's regulariser, at a tenth of its cost on a CPU.

Inverted dropout, as nn.Dropout: in training each value is kept with probability 1 - p and scaled
by 1 / (1 - p), so its expected value is the input's; in evaluation nothing changes. What differs
is how the mask is drawn. torch's dropout draws one random number per value (bernoulli), and on
a CPU that drawing was most of what dropout cost: at the `v3c` shape it made a float32 training
step 1.58x as long (2-core AMD EPYC, AVX2, 2026-12-02, benchmarks/bench_dropout.py). Here one
64-bit random number gives four 16-bit draws: a value is kept where its draw is at least
round(p * 65536) of the 65,536 possible, so p is honoured to 1/65,536 and the scale is the exact
inverse of the share kept. Drawing a mask for the attention weights of one `v3c` layer took 28 ms
with bernoulli and 2 ms so. The draws come from torch's generator on the tensor's device, whose
state a checkpoint saves: a resumed run draws the same masks. A training run on a CPU goes one step
further where it could build runtime/fused_attention.c: one pass with a mask hashed from one seed,
stored nowhere (runtime/fused_dropout.py; the same rule for p and the scale).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

_LEVELS = 1 << 16
_LOWEST = -(1 << 15)  # int16's range starts here

# On a CPU, dropout in one pass with a mask hashed from one seed (runtime/fused_dropout.py: `usable`
# and `hashed_dropout`), installed by a training run with runtime/fused_attention.py's library
_cpu_kernel: ModuleType | None = None


def use_cpu_kernel(kernel: ModuleType | None) -> None:
    global _cpu_kernel
    _cpu_kernel = kernel


def dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """(where to keep x's values, as a bool tensor of x's shape; the scale of those kept)."""
    dropped = min(round(p * _LEVELS), _LEVELS)
    n = x.numel()
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    kept = words.view(torch.int16)[:n].view(x.shape) >= _LOWEST + dropped
    return kept, (_LEVELS / (_LEVELS - dropped) if dropped < _LEVELS else 0.0)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each value kept with probability about 1 - p (to 1/65,536) and scaled to keep its mean."""
    if p <= 0.0 or round(p * _LEVELS) == 0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    if _cpu_kernel is not None and _cpu_kernel.usable(x, p):
        return _cpu_kernel.hashed_dropout(x, p)
    kept, scale = dropout_mask(x, p)
    return torch.where(kept, x * scale, torch.zeros((), dtype=x.dtype, device=x.device))


class Dropout(nn.Module):
    """nn.Dropout's interface (`p`, train and eval modes) over `dropout`."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"
