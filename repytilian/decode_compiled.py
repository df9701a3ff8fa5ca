"""A decoding step compiled as one graph: the model's own forward pass for one token of one
sequence, through torch.compile (Inductor's C++ wrapper, weights frozen as constants).

Why: at batch 1 a small model's step is the cost of its ~80 operations, each a call from Python
into PyTorch (4-25 us each), not their arithmetic. Compiled, the step is one call into
generated C++: measured on a 2-core AVX2 EPYC for the shipped `bpe` shape (4x128, context 64),
0.59 ms a token against 1.4-2.3 ms eager. What it costs: compiling takes ~30 s on 2 cores the
first time for a model shape, a few seconds once Inductor's cache on disk has it, so it is asked
for (`--compile`), never on by default; it pays after about 30 s / (1 ms saved a token) = 30,000
tokens the first time, about 3,000 after. Models whose steps are bound by reading their weights
(`hyper`, 11M parameters: 44 MB a token in float32) gain nothing from it.

The graph is static: the KV cache's row is passed whole, the position as a tensor, and the
attention masks what lies beyond it, so one compile serves every position. `FixedCache` gives the
model's forward pass the cache interface (attention.KVCache's) for that. A compile that fails is
reported once (a note) and decoding goes on without it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .events import note
from .model import GPT


class FixedCache:
    """One step of one token per row into caches of static shape (rows, block, heads, head size),
    each row at its own position (`pos`, (rows,)): the interface GPT.forward asks of a cache."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], pos: torch.Tensor):
        self.keys, self.values = keys, values
        rows, block = keys[0].shape[:2]
        self.start = pos[:, None]  # (rows, 1)
        self.flat = pos + block * torch.arange(rows, device=pos.device)
        unseen = torch.arange(block, device=pos.device) > pos[:, None]  # (rows, block)
        self.mask = torch.zeros(unseen.shape, device=pos.device).masked_fill(unseen, float("-inf"))[:, None, None]

    def check_room(self, new: int) -> None:  # the caller keeps to the block
        pass

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, nh, _, hs = k.shape
        keys, values = self.keys[layer], self.values[layer]
        keys.view(-1, nh * hs).index_copy_(0, self.flat, k.reshape(B, nh * hs))
        values.view(-1, nh * hs).index_copy_(0, self.flat, v.reshape(B, nh * hs))
        # Written out, not F.scaled_dot_product_attention: compiled, this is one fused loop per layer
        # (measured on a 2-core AVX2 EPYC, bpe: 442-458 us a step against 478-481 through the
        # CPU's flash-attention kernel, which is made for long queries).
        scores = torch.matmul(q * q.size(-1) ** -0.5, keys.permute(0, 2, 3, 1)) + self.mask
        return torch.matmul(scores.softmax(dim=-1), values.transpose(1, 2))

    def advance(self, new: int) -> None:  # the caller moves the position on
        pass


def _step(model: GPT, keys: list[torch.Tensor], values: list[torch.Tensor], idx: torch.Tensor,
          pos: torch.Tensor) -> torch.Tensor:
    logits, _ = model(idx, last_only=True, cache=FixedCache(keys, values, pos))
    return logits[:, -1, :]


class CompiledStep:
    """`step(idx (1, 1), position, keys, values)` -> logits (1, vocab), or None where compiling failed."""

    def __init__(self, model: GPT):
        self.model = model
        self.compiled: Callable | None = torch.compile(_step, dynamic=False, fullgraph=True,
                                                       options={"cpp_wrapper": True, "freezing": True})
        self.compile_seconds: float | None = None

    def __call__(self, idx: torch.Tensor, position: int, keys: list[torch.Tensor],
                 values: list[torch.Tensor]) -> torch.Tensor | None:
        if self.compiled is None:
            return None
        pos = torch.tensor([position], device=idx.device)
        if self.compile_seconds is not None:
            return self.compiled(self.model, keys, values, idx, pos)
        t0 = time.perf_counter()
        try:
            logits = self.compiled(self.model, keys, values, idx, pos)
        except Exception as e:  # noqa: BLE001 - no compiler, an unsupported layer: decode without it
            self.compiled = None
            note(f"note: the decoding step could not be compiled ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                 "decoding without compiling")
            return None
        self.compile_seconds = time.perf_counter() - t0
        note(f"compiled the decoding step in {self.compile_seconds:.1f} s", kind="info")
        return logits
