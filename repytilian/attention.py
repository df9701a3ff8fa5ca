"""Causal self-attention's core: softmax(q k^T / sqrt(hs), the future masked out) v.

Two ways to compute the same thing, and the choice between them. PyTorch's fused kernel
(`scaled_dot_product_attention`: flash or memory-efficient) never builds the T x T matrix of
scores and is the fastest in float32 and on GPUs. On a CPU in bf16, though, its backward pass is
about 3x slower than its float32 one at these shapes, so for contexts up to
EXPLICIT_ATTENTION_MAX_T the attention is written out as in the lecture (two matmuls, a mask, a
softmax), which autocast keeps in bf16. Measured on 2 cores: `tiny` (T 64) trains 1.3x faster in
bf16 with it instead of not faster at all, `hyper` (T 256) 2.07x faster than float32 instead of
1.8x. The (T, T) score matrix it builds is what caps it: longer contexts keep the fused kernel.
Dropout on the attention weights needs them built, so a CPU writes the attention out for it, or,
where runtime/fused_attention.py has built its kernel for the machine (float32; bf16 where it
timed faster), computes it in one pass that keeps each head's matrices in the core's cache (a
third way; the same function).

Generation adds a KV cache (`KVCache`): the keys and values of the positions already seen, kept
per layer, so that each new token is one row of queries against them instead of the whole
window computed again.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from .dropout import dropout_mask

EXPLICIT_ATTENTION_MAX_T = 256

# On a CPU, attention with dropout in one pass, for the inputs it takes (None for others): a kernel
# built for the machine (runtime/fused_attention.py), installed by a training run that needs it
DropoutKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], "torch.Tensor | None"]
_cpu_dropout_kernel: DropoutKernel | None = None


def use_cpu_dropout_kernel(kernel: DropoutKernel | None) -> None:
    global _cpu_dropout_kernel
    _cpu_dropout_kernel = kernel


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                     start: int = 0) -> torch.Tensor:
    """Causal self-attention of (B, nh, T, hs) queries at positions start..start+T-1 over (B, nh,
    start+T, hs) keys and values: each query sees its own position and those before it."""
    T, end = q.size(-2), k.size(-2)
    if start == 0:
        # With dropout a CPU takes the written-out way too (the fused kernel cannot drop out weights
        # it never builds), or one pass that writes nothing out where a kernel is installed
        if q.device.type == "cpu" and (dropout_p > 0.0 or v.dtype != torch.float32 and T <= EXPLICIT_ATTENTION_MAX_T):
            fused = _cpu_dropout_kernel(q, k, v, dropout_p) if dropout_p > 0.0 and _cpu_dropout_kernel else None
            return fused if fused is not None else explicit_causal_attention(q, k, v, dropout_p)
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
    if dropout_p <= 0.0:
        return weights @ v
    kept, scale = dropout_mask(weights, dropout_p)
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    return torch.where(kept, weights, zero) @ v * scale  # scaled as the (T, hs) result, not the (T, T) weights


class KVCache:
    """Every layer's keys and values of the positions each sequence has seen, in tensors allocated once.

    Row b of the cache holds one sequence, `lengths[b]` positions long; rows may differ (requests
    with prompts of different lengths decoding together in one batch). The model reads and writes
    the rows of a view (`rows`); a step's keys and values go after each row's own (`attend`, layer
    by layer), then the lengths move on (`advance`). A row's length is the position of its next token.
    When a view's rows all have one length, positions and attention take the shared-length path
    (slices, no mask); otherwise each row gets its own positions and a mask of what it has seen.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        # Laid out (rows, positions, heads, head size): a step writes each row's new position as
        # one contiguous slice, whatever the row's length (measured: 5.7 us against 9.7 us for
        # the (rows, heads, positions, head size) layout's scattered writes, and attention over
        # it no slower).
        shape = (batch_size, block_size, n_head, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.block_size = block_size
        self.lengths = [0] * batch_size
        self.first, self.count = 0, batch_size  # the rows this view reads and writes
        self._step: tuple | None = None

    def rows(self, first: int, count: int) -> KVCache:
        """A view of rows first..first+count-1: the same tensors and lengths, for one model call."""
        view = copy.copy(self)
        view.first, view.count, view._step = first, count, None
        return view

    @property
    def own(self) -> list[int]:
        return self.lengths[self.first:self.first + self.count]

    @property
    def length(self) -> int:
        """The length of this view's rows, which must all have one."""
        own = set(self.own)
        if len(own) != 1:
            raise ValueError(f"the rows have different lengths: {sorted(own)}")
        return own.pop()

    @property
    def start(self) -> int | torch.Tensor:
        """The position of each row's next token: one int when they share it, else a (rows, 1) tensor."""
        return self._positions()[0]

    def _positions(self, new: int = 1) -> tuple:
        """(start, where a step's keys go in the flattened rows, the attention mask, the end), once per call."""
        if self._step is None or self._step[-1] != new:
            own = self.own
            if all(n == own[0] for n in own):
                self._step = (own[0], None, None, own[0] + new, new)
            else:
                device = self.keys[0].device
                start = torch.tensor(own, device=device)[:, None]
                positions = start + torch.arange(new, device=device)  # (B, T): each row's own
                flat = (positions + self.block_size * torch.arange(self.count, device=device)[:, None]).flatten()
                end = max(own) + new
                unseen = torch.arange(end, device=device) > positions[..., None]  # (B, T, end): a row's future
                mask = torch.zeros(unseen.shape, device=device).masked_fill_(unseen, float("-inf"))[:, None]
                self._step = (start, flat, mask, end, new)
        return self._step

    def check_room(self, new: int) -> None:
        longest = max(self.own)
        if longest + new > self.block_size:
            raise ValueError(f"the cache holds {self.block_size} positions; {longest + new} asked for")

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store (B, nh, T, hs) keys and values after each row's cached ones, then the causal
        attention of the (B, nh, T, hs) queries over all of them."""
        keys = self.keys[layer].narrow(0, self.first, self.count)
        values = self.values[layer].narrow(0, self.first, self.count)
        start, flat, mask, end, new = self._positions(k.size(-2))
        if flat is None:  # one length for all rows: slices, and causal_attention's own mask
            keys.narrow(1, start, new).copy_(k.transpose(1, 2))
            values.narrow(1, start, new).copy_(v.transpose(1, 2))
            return causal_attention(q, keys.narrow(1, 0, end).transpose(1, 2),
                                    values.narrow(1, 0, end).transpose(1, 2), 0.0, start)
        B, nh, T, hs = k.shape
        keys.view(-1, nh * hs).index_copy_(0, flat, k.transpose(1, 2).reshape(B * T, nh * hs))
        values.view(-1, nh * hs).index_copy_(0, flat, v.transpose(1, 2).reshape(B * T, nh * hs))
        return F.scaled_dot_product_attention(q, keys.narrow(1, 0, end).transpose(1, 2),
                                              values.narrow(1, 0, end).transpose(1, 2), attn_mask=mask)

    def advance(self, new: int) -> None:
        for b in range(self.first, self.first + self.count):
            self.lengths[b] += new
        self._step = None

    def reset(self) -> None:
        for b in range(self.first, self.first + self.count):
            self.lengths[b] = 0
        self._step = None

    def copy_row(self, source: int, target: int) -> None:
        """Row `target` becomes a copy of row `source` (a sample that shares another's prompt, or a
        row moved to close a gap)."""
        n = self.lengths[source]
        for tensors in (self.keys, self.values):
            for t in tensors:
                t[target, :n] = t[source, :n]
        self.lengths[target] = n
