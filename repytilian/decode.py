"""Generation's fast path: the model's own forward pass with a KV cache, one new token per step.

The maths is model.GPT.forward's, given a `KVCache` (attention.py). What is here is how that is
made fast at batch 1 on a CPU, where a step's time is mostly not the arithmetic:
- small models spend it in per-call overhead: an nn.Module call costs about as long as one of
  their matrix-vector products. `for_decoding` makes a copy of the model's module tree whose
  leaf layers are plain callables (`DecodingLinear`, `DecodingNorm`, no dropout) and whose other
  modules are called without hook handling; the blocks' code, the forward pass, is the model's.
  Measured on 2 cores against the hand-written decoder this replaced: default 0.67 against
  0.57 ms a token, hyper 2.8 against 2.6 ms; with nn.Module layers it was 1.2 and 3.5 ms.
- large models spend it reading every weight once per token, so their blocks' matrices can be
  held in 16 bits (half the bytes: float16 on any CPU, bf16 where it is native), where this
  machine is measured to be faster so (runtime/precision.decoding_dtype);
- for one token, oneDNN is switched off where PyTorch's own kernels are faster (`Decoder.forward`).
The copy shares the model's embeddings and norms (its matrices are laid-out copies); the model
itself is never changed.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from .decode_compiled import CompiledStep
from .dropout import Dropout
from .model import GPT
from .runtime.precision import PROBE_SECONDS, decoding_dtype
from .sampling import SamplingOptions


class DecodingLinear:
    """A Linear layer for one token at a time, a plain callable (an nn.Module call costs ~4 us, as
    long as a small matrix-vector product). Weights laid out as is faster here: float32 as (in,
    out) for matmul, bf16 as (out, in) for F.linear (measured on a (1, 1, 128) input and default's
    128x384 matrix: 6.7 us against 8.3 us through F.linear, and 9.5 us through nn.Linear).
    float16 keeps a float32 copy too: its kernel is a matrix-vector product per row, so a step of
    more than HALF_ROWS rows (a prefill, a batch of requests) goes through float32 (measured on a
    2-core AVX2 EPYC, hyper's 24 block matrices: 1 row 1.2 ms in float16 against 2.8 ms in
    float32, 4 rows 4.0 against 5.5, 8 rows 7.7 against 4.9). Input and output stay float32."""

    def __init__(self, layer: nn.Linear, dtype: torch.dtype):
        w = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        self.float32 = dtype in (torch.float32, torch.float16)
        self.weight = w.t().contiguous() if self.float32 else w.to(dtype).contiguous()
        self.bias = None if bias is None else bias.to(torch.float32 if self.float32 else dtype)
        self.half = w.to(dtype).contiguous() if dtype == torch.float16 else None
        self.half_bias = None if bias is None or self.half is None else bias.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.half is not None and x.numel() <= HALF_ROWS * x.size(-1):
            return F.linear(x.to(torch.float16), self.half, self.half_bias).float()
        if not self.float32:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).float()
        y = torch.matmul(x, self.weight)
        return y if self.bias is None else y.add_(self.bias)


HALF_ROWS = 4  # float16 weights for steps of at most this many rows (see DecodingLinear)


class DecodingNorm:
    """A LayerNorm or RMSNorm as one direct call, sharing the layer's weights."""

    def __init__(self, layer: nn.Module):
        self.shape, self.weight, self.eps = layer.normalized_shape, layer.weight.detach(), layer.eps
        self.rms = isinstance(layer, nn.RMSNorm)
        self.bias = None if self.rms or layer.bias is None else layer.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return torch.rms_norm(x, self.shape, self.weight, self.eps)
        return torch.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def _no_dropout(x: torch.Tensor) -> torch.Tensor:
    return x


class DecodingEmbedding:
    def __init__(self, layer: nn.Embedding):
        self.weight = layer.weight.detach()

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.embedding(self.weight, idx)


def _lean(child: nn.Module, dtype: torch.dtype):
    """The plain callable that stands in for a leaf layer while decoding, or None to keep it."""
    if isinstance(child, nn.Linear):
        return DecodingLinear(child, dtype)
    if isinstance(child, (nn.LayerNorm, nn.RMSNorm)):
        return DecodingNorm(child)
    if isinstance(child, (nn.Dropout, Dropout)):
        return _no_dropout
    if isinstance(child, nn.Embedding):
        return DecodingEmbedding(child)
    return None


def for_decoding(model: GPT, dtype: torch.dtype) -> GPT:
    """The model's structure for decoding one token at a time: the same forward pass (GPT.forward),
    with its leaf layers swapped for plain callables (`_lean`; the blocks' matrices held in `dtype`,
    the head's in float32). A new module tree that shares the model's embeddings and norms (the
    matrices are laid-out copies); the model itself is untouched."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # deepcopy keeps these as they are
    fast = copy.deepcopy(model, memo=shared).eval()
    inside_blocks = [m for b in fast.transformer.h for m in (b, b.attn, b.mlp) if m is not None]
    for parent in [fast, fast.transformer, *inside_blocks]:
        for name, child in list(parent.named_children()):
            lean = _lean(child, dtype if parent in inside_blocks else torch.float32)
            if lean is not None:
                delattr(parent, name)  # out of the module tree: a plain attribute from here on
                object.__setattr__(parent, name, lean)
        _call_forward_directly(parent)
    return fast


def _call_forward_directly(module: nn.Module) -> None:
    """Calling the module runs its forward with nothing around it (no hooks to look for)."""
    cls = type(module)
    if not isinstance(module, nn.ModuleDict):
        module.__class__ = type(cls.__name__, (cls,), {"__call__": cls.forward})


@contextmanager
def _without_onednn(active: bool) -> Iterator[None]:
    if not active or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


class Decoder:
    """The model, a KV cache with a row per sequence, and the settings that make it fast here.

    `dtype` is that of the blocks' large matrices (a snapshot of them is taken: take a new
    Decoder after training); activations, the cache and attention stay in
    float32 (bf16 attention is several times slower on CPUs). The model is put in eval mode.
    Rows are added as a batch needs them (`ensure_rows`); each keeps its own length.
    """

    def __init__(self, model: GPT, batch_size: int = 1, dtype: torch.dtype = torch.float32,
                 compiled: CompiledStep | None = None):
        model.eval()
        self.config = model.config
        self.dtype = dtype
        self.device = model.lm_head.weight.device
        self.model = for_decoding(model, dtype)
        self.cache = model.new_cache(batch_size)
        self._new_cache = model.new_cache
        # One token of one sequence as one built step (decode_compiled.py), found or built now:
        # before the first token, so that what building says comes before any text.
        self.compiled = compiled if compiled is not None and compiled.prepare() else None
        self.compile_setting: bool | None = None  # the engine's, when it made this (engine.DecoderPool)
        self.dtype_asked: torch.dtype | None = None  # the format its request asked for (None: the default)

    @property
    def length(self) -> int:
        return self.cache.length

    @property
    def capacity(self) -> int:
        return len(self.cache.lengths)

    def ensure_rows(self, rows: int) -> None:
        """Room for at least `rows` sequences (the cache grows, keeping what its rows hold)."""
        if rows <= self.capacity:
            return
        old, self.cache = self.cache, self._new_cache(max(rows, 2 * self.capacity))
        for new_tensors, old_tensors in ((self.cache.keys, old.keys), (self.cache.values, old.values)):
            for new, held in zip(new_tensors, old_tensors):
                new[: held.size(0)] = held
        self.cache.lengths[: len(old.lengths)] = old.lengths

    def forward(self, idx: torch.Tensor, first: int = 0) -> torch.Tensor:
        """idx (B, T) new tokens after the cached ones of rows first..first+B-1 -> logits (B,
        vocab) of the last position."""
        if self.compiled is not None and (idx.size(1) == 1 or self.compiled.prefills(idx.size(1))):
            logits = self._through_built_step(idx, first)
            if logits is not None:
                return logits
        # oneDNN is switched off where PyTorch's own kernels are faster (measured on an AVX512-BF16
        # CPU): for one token, the bf16 matrix-vector kernel reads the weights about twice as fast
        # (0.85 vs 1.66 ms for hyper's 24 matrices); in float32, a GELU costs ~8 us through
        # oneDNN against ~1.4 us without, whatever its size up to thousands of elements.
        cpu = self.device.type == "cpu"
        skip_onednn = cpu and (self.dtype in (torch.float32, torch.float16) or idx.size(1) == 1)
        with torch.inference_mode(), _without_onednn(skip_onednn):
            logits, _ = self.model(idx, last_only=True, cache=self.cache.rows(first, idx.size(0)))
        return logits[:, -1, :].float()

    def steps(self, lasts: list[int], count: int, end: int | None, samplings: list[SamplingOptions],
              generators: list[torch.Generator | None], never: torch.Tensor | None,
              logprobs: bool) -> tuple[list[list[int]], list[list[float]] | None] | None:
        """Up to `count` steps at once of the first len(lasts) rows, after their last tokens `lasts`
        (not in the cache yet), where the built step's loop takes them (CompiledStep.steps); else None."""
        if self.compiled is None:
            return None
        return self.compiled.steps(lasts, self.cache, count, end, samplings, generators, never, logprobs)

    def _through_built_step(self, idx: torch.Tensor, first: int) -> torch.Tensor | None:
        """idx's positions one at a time through the built step (a step, or a short prompt), or None
        where it does not serve these rows (eager then)."""
        count, new = idx.shape
        lengths = self.cache.lengths
        end = max(lengths[first:first + count]) + new
        if new > 1 and self.compiled.takes_prompt(end):  # all the tokens at once, a row at a time
            logits = torch.cat([self.compiled.prompt_step(idx[r:r + 1], self.cache, first + r) for r in range(count)])
            lengths[first:first + count] = [n + new for n in lengths[first:first + count]]
            return logits
        if not self.compiled.serves(count, end):
            return None
        for t in range(new):
            logits = self.compiled(idx if new == 1 else idx[:, t:t + 1], self.cache, first)
            # the lengths moved on in place, not through a KVCache.rows view: making one costs ~15 us
            # a token, 8% of a built bpe step
            if count == 1:
                lengths[first] += 1
            else:
                lengths[first:first + count] = [n + 1 for n in lengths[first:first + count]]
        return logits

    def prepare_rows(self) -> None:
        """Where this decoder has a built step: find or build the one for several rows at once too
        (a server's batches), before a request waits for it."""
        if self.compiled is not None:
            self.compiled.prepare(rows=True)

    def reset(self, row: int | None = None) -> None:
        """Forget what every row holds (or row `row`)."""
        if row is None:
            self.cache.rows(0, self.capacity).reset()
        else:
            self.cache.lengths[row] = 0


def _seconds_per_step(model: GPT, batch_size: int, dtype: torch.dtype) -> float:
    """One token's decoding time in this format, from a few steps (at most about PROBE_SECONDS)."""
    decoder = Decoder(model, batch_size, dtype)
    idx = torch.zeros(batch_size, 1, dtype=torch.long, device=decoder.device)
    decoder.forward(idx)  # warm-up
    t0, steps = time.perf_counter(), 0
    while steps < 5 and time.perf_counter() - t0 < PROBE_SECONDS:
        decoder.forward(idx)
        steps += 1
    return (time.perf_counter() - t0) / steps


def choose_dtype(model: GPT, batch_size: int = 1) -> torch.dtype:
    """float32, or bf16 where it makes this model's decoding faster on this machine (measured, and
    only where bf16 is native: an emulated bf16 step is never timed)."""
    device = model.lm_head.weight.device
    return decoding_dtype(device, model.config.n_embd, lambda dtype: _seconds_per_step(model, batch_size, dtype))
