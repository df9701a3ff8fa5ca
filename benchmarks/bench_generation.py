"""Generation speed at batch 1: tokens/s and per-token latency, with and without the KV cache.

    python benchmarks/bench_generation.py                 # default and hyper presets
    python benchmarks/bench_generation.py --tokens 1000 --json gen.json

Weights are random (speed does not depend on them); the vocabulary is Tiny Shakespeare's 65
characters. Each figure is the median of --repeats runs, after a warm-up run.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repytilian.config import SETTINGS  # noqa: E402
from repytilian.model import GPT, ModelConfig  # noqa: E402
from repytilian.sampling import SamplingOptions, sample_ids  # noqa: E402


@torch.no_grad()
def recompute_ids(model: GPT, tokens: int):
    """nanoGPT's generation without a cache: every token re-runs the last block_size tokens."""
    idx = torch.zeros(1, 1, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    for _ in range(tokens):
        logits, _ = model(idx[:, -model.config.block_size:], last_only=True)
        probs = torch.softmax(logits[:, -1, :] / 0.8, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=gen)), dim=1)
        yield idx[0, -1]


def timed_run(model: GPT, tokens: int, mode: str) -> list[float]:
    """Seconds from the start to each generated token."""
    if mode == "recompute":
        ids = recompute_ids(model, tokens)
    else:
        ids = sample_ids(model, [0], tokens, SamplingOptions(seed=0), use_cache=mode == "cache")
    stamps = []
    t0 = time.perf_counter()
    for _ in ids:
        stamps.append(time.perf_counter() - t0)
    return stamps


def measure(preset: str, tokens: int, mode: str, repeats: int) -> dict:
    fields = {k: v for k, v in SETTINGS[preset].items() if k in ModelConfig.__dataclass_fields__}
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, **{**fields, "dropout": 0.0})).eval()
    model.eval()
    timed_run(model, min(tokens, 50), mode)  # warm-up
    runs = [timed_run(model, tokens, mode) for _ in range(repeats)]
    rates = [len(r) / r[-1] for r in runs]
    gaps = [b - a for r in runs for a, b in zip(r, r[1:])]
    return {
        "preset": preset, "mode": mode, "tokens": tokens, "block_size": model.config.block_size,
        "tokens_per_s": round(statistics.median(rates), 1),
        "ms_per_token_median": round(1000 * statistics.median(gaps), 3),
        "ms_per_token_p99": round(1000 * sorted(gaps)[int(0.99 * (len(gaps) - 1))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="default,hyper")
    parser.add_argument("--tokens", type=int, default=600, help="tokens per run with the cache (default 600)")
    parser.add_argument("--tokens-no-cache", type=int, default=None,
                        help="tokens per run without it (default: as many, but at most 300 for hyper)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        cached = measure(preset, args.tokens, "cache", args.repeats)
        n_plain = args.tokens_no_cache or (min(args.tokens, 300) if preset == "hyper" else args.tokens)
        plain = measure(preset, n_plain, "no-cache", args.repeats)
        classic = measure(preset, n_plain, "recompute", args.repeats)
        cached["speedup_vs_no_cache"] = round(cached["tokens_per_s"] / plain["tokens_per_s"], 1)
        cached["speedup_vs_recompute"] = round(cached["tokens_per_s"] / classic["tokens_per_s"], 1)
        rows += [cached, plain, classic]
    print(f"generation at batch 1, {time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("modes: cache = KV cache (decode.py); no-cache = the same sampler re-running its window;")
    print("       recompute = nanoGPT's generate, re-running the last block_size tokens for every token")
    print(f"{'preset':<8} {'context':>7} {'mode':>9} {'tokens':>6} {'tokens/s':>9} {'ms/token':>9} {'p99 ms':>8} "
          f"{'vs no-cache':>11} {'vs recompute':>12}")
    for r in rows:
        a = f"{r['speedup_vs_no_cache']}x" if "speedup_vs_no_cache" in r else ""
        b = f"{r['speedup_vs_recompute']}x" if "speedup_vs_recompute" in r else ""
        print(f"{r['preset']:<8} {r['block_size']:>7} {r['mode']:>9} {r['tokens']:>6} {r['tokens_per_s']:>9,.1f} "
              f"{r['ms_per_token_median']:>9} {r['ms_per_token_p99']:>8} {a:>11} {b:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
