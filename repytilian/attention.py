"""Causal self-attention's core: softmax(q k^T / sqrt(hs), the future masked out) v.

Two ways to compute the same thing, and the choice between them. PyTorch's fused kernel
(`scaled_dot_product_attention`: flash or memory-efficient) never builds the T x T matrix of
scores and is the fastest in float32 and on GPUs. On a CPU in bf16, though, its backward pass is
about 3x slower than its float32 one at these shapes, so for contexts up to
EXPLICIT_ATTENTION_MAX_T the attention is written out as in the lecture (two matmuls, a mask, a
softmax), which autocast keeps in bf16. Measured on 2 cores: `tiny` (T 64) trains 1.3x faster in
bf16 with it instead of not faster at all, `hyper` (T 256) 2.07x faster than float32 instead of
1.8x. The (T, T) score matrix it builds is what caps it: longer contexts keep the fused kernel.

Generation adds a KV cache (`KVCache`): the keys and values of the positions already seen, kept
per layer, so that each new token is one row of queries against them instead of the whole
window computed again.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

EXPLICIT_ATTENTION_MAX_T = 256


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                     start: int = 0) -> torch.Tensor:
    """Causal self-attention of (B, nh, T, hs) queries at positions start..start+T-1 over (B, nh,
    start+T, hs) keys and values: each query sees its own position and those before it."""
    T, end = q.size(-2), k.size(-2)
    if start == 0:
        if q.device.type == "cpu" and v.dtype != torch.float32 and T <= EXPLICIT_ATTENTION_MAX_T:
            return explicit_causal_attention(q, k, v, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if T == 1:  # one new token after the cached ones sees them all: nothing to mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    seen = torch.arange(end, device=q.device) <= torch.arange(start, end, device=q.device)[:, None]  # (T, end)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, dropout_p=dropout_p)


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


class KVCache:
    """Every layer's keys and values of positions 0..length-1, in tensors allocated once.

    The model writes a step's keys and values at length..length+T-1 (`extend`, layer by layer),
    then moves `length` on (`advance`). `length` is also the position of the next token.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_head, block_size, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.block_size = block_size
        self.length = 0

    def check_room(self, new: int) -> None:
        if self.length + new > self.block_size:
            raise ValueError(f"the cache holds {self.block_size} positions; {self.length + new} asked for")

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys and values after the cached ones; all of them, cached and new."""
        keys, values = self.keys[layer], self.values[layer]
        start, new = self.length, k.size(-2)
        keys.narrow(2, start, new).copy_(k)
        values.narrow(2, start, new).copy_(v)
        return keys.narrow(2, 0, start + new), values.narrow(2, 0, start + new)

    def advance(self, new: int) -> None:
        self.length += new

    def reset(self) -> None:
        self.length = 0
