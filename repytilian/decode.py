"""Generation's fast path: the model's forward pass with a KV cache, one new token per step.

The maths is model.GPT.forward's (tests compare the logits), written as plain functions over
weights prepared once, because at batch 1 on a CPU a step's time is not the arithmetic:
- small models spend it in per-operation overhead, so there are no module calls, no dropout,
  2-D activations, and fused bias-and-matmul calls;
- large models spend it reading every weight from memory once per token, so their matrices can
  be held in bf16 (half the bytes), chosen only where this machine is measured to be faster so.

The cache holds the keys and values of positions 0..length-1 of every layer, in tensors
allocated once. A step feeds only the new token, which attends to the cache and itself.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .model import ACTIVATIONS, GPT, apply_rope
from .runtime.precision import PROBE_SECONDS, decoding_dtype_candidates

# Decoding one token at a time is overhead-bound below this width: bf16 only adds conversions.
BF16_MIN_WIDTH = 256



@dataclass
class _Linear:
    weight: torch.Tensor  # float32: (in, out) for addmm; bf16: (out, in) for F.linear (each the faster here)
    bias: torch.Tensor | None

    @classmethod
    def of(cls, layer: torch.nn.Linear, dtype: torch.dtype) -> "_Linear":
        w = layer.weight.detach()
        b = None if layer.bias is None else layer.bias.detach()
        if dtype == torch.float32:
            return cls(w.t().contiguous(), b)
        return cls(w.to(dtype).contiguous(), None if b is None else b.to(dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) float32 -> (N, out) float32; only the weights are ever in bf16."""
        if self.weight.dtype != torch.float32:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).float()
        if self.bias is None:
            return torch.mm(x, self.weight)
        return torch.addmm(self.bias, x, self.weight)


class _Norm:
    """A LayerNorm or RMSNorm as one direct call (no module dispatch)."""

    def __init__(self, layer: torch.nn.Module):
        self.shape, self.weight, self.eps = layer.normalized_shape, layer.weight.detach(), layer.eps
        self.rms = isinstance(layer, torch.nn.RMSNorm)
        self.bias = None if self.rms or layer.bias is None else layer.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return torch.rms_norm(x, self.shape, self.weight, self.eps)
        return torch.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


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
    """A KV-cached forward pass over a snapshot of the model's weights (take a new one after training).

    `dtype` is that of the large matrices' weights; activations, the cache and attention stay in
    float32 (bf16 attention is several times slower on CPUs).
    """

    def __init__(self, model: GPT, batch_size: int = 1, dtype: torch.dtype = torch.float32):
        cfg = self.config = model.config
        self.dtype = dtype
        self.device = model.lm_head.weight.device
        t = model.transformer
        self.wte = t.wte.weight.detach()
        self.wpe = t.wpe.weight.detach() if "wpe" in t else None
        self.rope = None if self.wpe is not None else (model.rope_cos, model.rope_sin)
        self.layers = [
            (_Norm(b.ln_1), _Linear.of(b.attn.c_attn, dtype), _Linear.of(b.attn.c_proj, dtype),
             _Norm(b.ln_2), _Linear.of(b.mlp.c_fc, dtype), _Linear.of(b.mlp.c_proj, dtype))
            for b in t.h
        ]
        self.qk_norms = [(_Norm(b.attn.q_norm), _Norm(b.attn.k_norm)) if cfg.qk_norm else None for b in t.h]
        self.gated = cfg.activation == "swiglu"
        self.ln_f = _Norm(t.ln_f)
        if cfg.tie_embeddings:
            self.head = _Linear(self.wte.t().contiguous(), None)  # the token embedding, as in the model
        else:
            self.head = _Linear.of(model.lm_head, torch.float32)
        self.activation = ACTIVATIONS[cfg.activation]
        self.n_head, self.hs = cfg.n_head, cfg.n_embd // cfg.n_head
        # Per layer, keys and values side by side, so one copy stores both: (B, 2, nh, block, hs)
        shape = (batch_size, 2, cfg.n_head, cfg.block_size, self.hs)
        self.kv = [torch.zeros(shape, device=self.device) for _ in range(cfg.n_layer)]
        self.batch_size = batch_size
        self.length = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) new tokens after the cached ones -> logits (B, vocab) of the last position."""
        # oneDNN is switched off where PyTorch's own kernels are faster (measured on an AVX512-BF16
        # CPU): for one token, the bf16 matrix-vector kernel reads the weights about twice as fast
        # (0.85 vs 1.66 ms for hyper's 24 matrices); in float32, a GELU costs ~8 us through
        # oneDNN against ~1.4 us without, whatever its size up to thousands of elements.
        cpu = self.device.type == "cpu"
        skip_onednn = cpu and (self.dtype == torch.float32 or idx.size(1) == 1)
        with torch.inference_mode(), _without_onednn(skip_onednn):
            return self._forward(idx)

    def _forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        start, end = self.length, self.length + T
        if end > self.config.block_size:
            raise ValueError(f"the cache holds {self.config.block_size} positions; {end} asked for")
        nh, hs, C = self.n_head, self.hs, self.config.n_embd
        x = torch.embedding(self.wte, idx)
        if self.wpe is not None:
            x = x + self.wpe[start:end]
        x = x.view(B * T, C)  # (B*T, C)
        rope = None if self.rope is None else (self.rope[0][start:end], self.rope[1][start:end])
        for (ln_1, c_attn, c_proj, ln_2, c_fc, mlp_proj), kv, qk_norm in zip(self.layers, self.kv, self.qk_norms):
            qkv = c_attn(ln_1(x))  # (B*T, 3C)
            if T == 1:  # a single position needs no transpose: (B, 3, nh, 1, hs) is already head-major
                qkv = qkv.view(B, 3, nh, 1, hs)
            else:
                qkv = qkv.view(B, T, 3, nh, hs).permute(0, 2, 3, 1, 4)  # (B, 3, nh, T, hs)
            q = qkv[:, 0]
            if qk_norm is None and rope is None:
                kv[:, :, :, start:end] = qkv[:, 1:]  # keys and values in one copy
            else:
                k = qkv[:, 1]
                if qk_norm is not None:
                    q, k = qk_norm[0](q), qk_norm[1](k)
                if rope is not None:
                    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
                kv[:, 0, :, start:end] = k
                kv[:, 1, :, start:end] = qkv[:, 2]
            # Prefill starts from an empty cache (causal); a single new token sees every position.
            y = F.scaled_dot_product_attention(q, kv[:, 0, :, :end], kv[:, 1, :, :end], is_causal=T > 1)
            x = x + c_proj(y.transpose(1, 2).reshape(B * T, C))  # (B*T, C)
            h = c_fc(ln_2(x))
            if self.gated:
                gate, up = h.chunk(2, dim=-1)
                h = self.activation(gate) * up
            else:
                h = self.activation(h)
            x = x + mlp_proj(h)
        self.length = end
        last = x.view(B, T, C)[:, -1, :]  # (B, C)
        return self.head(self.ln_f(last))

    def reset(self) -> None:
        self.length = 0


def choose_dtype(model: GPT, batch_size: int = 1) -> torch.dtype:
    """float32, or bf16 where it makes this model's decoding faster on this machine (measured, and
    only where bf16 is native: an emulated bf16 step is never timed)."""
    device = model.lm_head.weight.device
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    candidates = decoding_dtype_candidates(device)
    if device.type != "cpu" or model.config.n_embd < BF16_MIN_WIDTH or len(candidates) == 1:
        return torch.float32
    timings = {}
    for dtype in candidates:
        decoder = Decoder(model, batch_size, dtype)
        idx = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        decoder.forward(idx)  # warm-up
        t0, steps = time.perf_counter(), 0
        while steps < 5 and time.perf_counter() - t0 < PROBE_SECONDS:
            decoder.forward(idx)
            steps += 1
        timings[dtype] = (time.perf_counter() - t0) / steps
    return min(timings, key=timings.get)
