"""What dropout costs a training step, and where: the `v3c` shape (6x144, context 128, batch 32, the
modern layout), one process, model forward + backward + fused AdamW step, variants measured in turn
(A B C ... A B C ...) so that a machine whose speed drifts favours none; medians printed.

    python benchmarks/bench_dropout.py [--dtype float32|bfloat16] [--rounds 5] [--steps 5]

Variants: no dropout; dropout everywhere (the embeddings' output, the attention weights, each
block's two residual branches), with the attention in one pass (runtime/fused_attention.c, where
it could be built; in bf16 it takes bf16 and computes in float32) and written out (as without a
compiler); dropout on the residual branches and embeddings only (the attention weights kept whole,
so attention stays one fused kernel); and one step's masks alone, drawn as torch's dropout draws
them (bernoulli) and as dropout.py does (four draws from one random number). In bf16 it also says
which of the two ways a training run takes on this machine (timed once at its shape, remembered).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repytilian.attention import use_cpu_dropout_kernel  # noqa: E402
from repytilian.dropout import dropout_mask  # noqa: E402
from repytilian.model import GPT, ModelConfig  # noqa: E402
from repytilian.runtime import fused_attention  # noqa: E402
from repytilian.runtime.device import prepare_for_training  # noqa: E402
from repytilian.runtime.fused_attention import fused_causal_attention  # noqa: E402

SHAPE = dict(vocab_size=65, block_size=128, n_layer=6, n_head=6, n_embd=144, bias=False, activation="swiglu",
             position="rope", norm="rmsnorm")
BATCH = 32


def one_pass(q, k, v, p):
    """The kernel in any dtype it takes, whichever way a training run would choose for bf16."""
    return fused_causal_attention(q, k, v, p) if fused_attention._ready else None


def step_fn(dropout: float, attention_dropout: bool, dtype: torch.dtype, kernel=one_pass):
    """One training step; `kernel`: how a CPU computes attention with dropout (None: written out)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SHAPE, dropout=dropout))
    if not attention_dropout:
        for block in model.transformer.h:
            block.attn.dropout = 0.0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 65, (BATCH, SHAPE["block_size"]))
    y = torch.randint(0, 65, (BATCH, SHAPE["block_size"]))

    def step() -> None:
        use_cpu_dropout_kernel(kernel)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def masks_fn(kind: str):
    """One step's worth of masks at this shape: per block B x nh x T x T weights and 2 x B x T x C."""
    T, C, nh = SHAPE["block_size"], SHAPE["n_embd"], SHAPE["n_head"]
    shapes = [(BATCH, nh, T, T), (BATCH, T, C), (BATCH, T, C)] * SHAPE["n_layer"] + [(BATCH, T, C)]
    if kind == "torch":
        return lambda: [torch.empty(s).bernoulli_(0.9) for s in shapes]
    tensors = [torch.empty(s) for s in shapes]
    return lambda: [dropout_mask(t, 0.1) for t in tensors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    prepare_for_training(torch.device("cpu"))
    dtype = getattr(torch, args.dtype)
    attention_shape = (BATCH, SHAPE["n_head"], SHAPE["block_size"], SHAPE["n_embd"] // SHAPE["n_head"])
    fused_attention.install(bf16_at=attention_shape if dtype == torch.bfloat16 else None)
    if dtype == torch.bfloat16:
        print(f"a bf16 training run here computes attention with dropout "
              f"{'in one pass' if fused_attention._bf16 else 'written out'} (timed at {attention_shape})")
    variants = {"no dropout": step_fn(0.0, True, dtype),
                "dropout 0.1 everywhere, one pass": step_fn(0.1, True, dtype),
                "dropout 0.1 everywhere, written out": step_fn(0.1, True, dtype, kernel=None),
                "dropout 0.1, attention weights kept": step_fn(0.1, False, dtype),
                "masks alone, torch's bernoulli": masks_fn("torch"), "masks alone, dropout.py's": masks_fn("ours")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    base = statistics.median(times["no dropout"])
    print(f"v3c shape, batch {BATCH}, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:40s} {m:8.1f} ms  ({m / base:.2f}x the step without dropout)")


if __name__ == "__main__":
    main()
