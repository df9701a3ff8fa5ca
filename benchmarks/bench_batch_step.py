"""Where a batch's token step goes: the model, prompts and windows, sampling, the engine's events.

    python benchmarks/bench_batch_step.py [--model models/shakespeare/v2c] [--rows 1,8] [--threads 1,2] [--eager]

Requests of --tokens tokens (seeded, the sampling defaults, log-probabilities asked for, as the
server asks) decode together through the engine, --rounds times, as many at once as --rows says;
the time of each part is summed around the engine's own calls and printed per token step. The
parts nest: `Engine.step` holds either `Batch.steps_at_once` (several steps a call through a built
step's loop, decode_loop.py: the model and the choice of each token, in C) or `Batch.step` (a step
at a time: the model calls, `Decoder.forward`, and the choice of each row's token); in both,
`Batch._prefill` is the prompts and the windows re-read when a context fills.
By default a decoding step built before (`--compile`) is used where one is kept for the model;
--eager decodes without it. No HTTP: serve_load.py measures the server around this.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repytilian import batching, decode, decode_loop, engine  # noqa: E402
from repytilian.api import load_model  # noqa: E402
from repytilian.runtime.cpu import cpu_name  # noqa: E402
from repytilian.sampling import SamplingOptions  # noqa: E402

PARTS = [(engine.Engine, "step", "Engine.step (all of a step)"),
         (batching.Batch, "steps_at_once", "  Batch.steps_at_once (several steps a call)"),
         (decode.Decoder, "steps", "    Decoder.steps (the model and the choice, in C)"),
         (batching.Batch, "step", "  Batch.step (a step at a time)"),
         (decode.Decoder, "forward", "    Decoder.forward (the model)"),
         (batching.Batch, "_prefill", "      Batch._prefill (prompts, windows)"),
         (decode_loop, "choose_rows", "    the choice of each token (in C)"),
         (batching, "probabilities", "    sampling: probabilities"), (batching, "arrival_noise", "    sampling: noise"),
         (batching, "first_arrival", "    sampling: the draw")]


def timed(spent: dict[str, float]) -> None:
    """Each part's time added up in `spent` (the benchmark's own wrappers; the library is unchanged)."""
    for owner, name, label in PARTS:
        inner = getattr(owner, name)

        def wrapper(*args, _inner=inner, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - start
        setattr(owner, name, wrapper)


def measure(lm, rows: int, tokens: int, rounds: int, spent: dict[str, float]) -> float:
    """Seconds a token step over `rounds` rounds of `rows` requests decoding together (after a warm-up)."""
    prompt = lm.encode_prompt("ROMEO:")
    total = 0.0
    for r in range(rounds + 1):
        if r == 1:
            spent.clear()
        requests = [engine.Request(list(prompt), tokens, SamplingOptions(seed=1000 * r + i), logprobs=True)
                    for i in range(rows)]
        start = time.perf_counter()
        for _ in lm.engine.run_many(requests):
            pass
        total += (time.perf_counter() - start) if r else 0.0
    return total / (rounds * tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "shakespeare" / "v2c"))
    parser.add_argument("--rows", default="1,8", help="requests decoding together, a comma-separated list")
    parser.add_argument("--threads", default="1,2", help="torch threads, a comma-separated list")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--eager", action="store_true", help="never through a built decoding step")
    args = parser.parse_args(argv)
    lm = load_model(args.model)
    if args.eager:
        lm.engine.compile = False
    spent: dict[str, float] = defaultdict(float)
    timed(spent)
    built = "eager" if args.eager else "a built step where one is kept"
    print(f"{Path(args.model).name}, {args.tokens}-token requests, {built}; {cpu_name()}, torch {torch.__version__}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for rows in [int(r) for r in args.rows.split(",")]:
            step = measure(lm, rows, args.tokens, args.rounds, spent)
            steps = args.rounds * args.tokens
            print(f"{rows} rows, {threads} threads: {step * 1e6:,.0f} us a step, {rows / step:,.0f} tokens/s")
            for _, _, label in PARTS:
                print(f"    {label:42s} {spent[label] / steps * 1e6:8,.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
