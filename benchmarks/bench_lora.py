"""LoRA against a full fine-tune on GPT-2's shape (124M parameters: 12 layers, 768 wide, 12 heads,
vocabulary 50,257), on this CPU: the time of a training step and the memory the process peaks at.

    python benchmarks/bench_lora.py [--rank 8] [--batch 1] [--tokens 256] [--steps 3]

Each way runs in a process of its own (its peak resident memory is its own), with random weights
(the time and memory do not depend on them) in float32: a warm-up step, then `--steps` timed steps
of the forward pass, the backward pass and AdamW, as `training.py --lora RANK` and a full fine-tune
take them, and a third way: LoRA with the token embeddings trained too (a chat fine-tune's, whose new
tokens need their rows). Prints the median step and the peak memory of each, and their ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repytilian.lora import add_lora  # noqa: E402
from repytilian.model import GPT, ModelConfig  # noqa: E402
from repytilian.runtime.cpu import cpu_name  # noqa: E402

GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, activation="gelu_tanh")


def one_way(rank: int, batch: int, tokens: int, steps: int) -> dict:
    """In this process: step times and peak memory of a full fine-tune (rank 0) or LoRA."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**GPT2))
    trained = add_lora(model, abs(rank), embeddings=rank < 0) if rank else sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-4)
    x = torch.randint(GPT2["vocab_size"], (batch, tokens))
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates the optimiser's moments: a warm-up
            times.append(time.perf_counter() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rank": rank, "trained": trained, "step_s": statistics.median(times), "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one way, as JSON
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_way(args.one, args.batch, args.tokens, args.steps)))
        return 0
    results = []
    for rank in (0, args.rank, -args.rank):  # full; LoRA; LoRA and the embeddings (a chat fine-tune's)
        child = subprocess.run([sys.executable, __file__, "--one", str(rank), "--batch", str(args.batch),
                                "--tokens", str(args.tokens), "--steps", str(args.steps)],
                               capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    full, lora, chat = results
    print(f"GPT-2 shape (124M), batch {args.batch} x {args.tokens} tokens, float32, AdamW, "
          f"{torch.get_num_threads()} threads, {cpu_name()}, {time.strftime('%Y-%m-%d')}")
    for name, r in (("full fine-tune", full), (f"LoRA rank {args.rank}", lora),
                    (f"LoRA {args.rank} + embeddings", chat)):
        print(f"  {name:22s} trains {r['trained']:>12,} parameters: {r['step_s']:6.2f} s a step, "
              f"peak memory {r['peak_mb']:7,.0f} MB")
    for name, r in (("LoRA", lora), ("LoRA + embeddings", chat)):
        print(f"  {name} / full: step {r['step_s'] / full['step_s']:.2f}x, memory {r['peak_mb'] / full['peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
