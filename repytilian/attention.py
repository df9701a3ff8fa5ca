"""Causal self-attention's core: softmax(q k^T / sqrt(hs), the future masked out) v.

Two ways to compute the same thing, and the choice between them. PyTorch's fused kernel
(`scaled_dot_product_attention`: flash or memory-efficient) never builds the T x T matrix of
scores and is the fastest in float32 and on GPUs. On a CPU in bf16, though, its backward pass is
about 3x slower than its float32 one at these shapes, so for contexts up to
EXPLICIT_ATTENTION_MAX_T the attention is written out as in the lecture (two matmuls, a mask, a
softmax), which autocast keeps in bf16. Measured on 2 cores: `tiny` (T 64) trains 1.3x faster in
bf16 with it instead of not faster at all, `hyper` (T 256) 2.07x faster than float32 instead of
1.8x. The (T, T) score matrix it builds is what caps it: longer contexts keep the fused kernel.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

EXPLICIT_ATTENTION_MAX_T = 256


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal self-attention of (B, nh, T, hs) queries, keys and values."""
    if q.device.type == "cpu" and v.dtype != torch.float32 and q.size(-2) <= EXPLICIT_ATTENTION_MAX_T:
        return explicit_causal_attention(q, k, v, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), the future masked out) v: what the fused kernel computes, written out."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
    # The future is masked by adding -inf rather than by masked_fill: the same scores, but an
    # addition needs no work in the backward pass (measured: 2-10% of a bf16 `tiny` step).
    future = torch.full((T, T), float("-inf"), dtype=scores.dtype, device=q.device).triu(1)
    weights = (scores + future).softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
