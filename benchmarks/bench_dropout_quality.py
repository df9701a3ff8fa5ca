"""Quality per time with and without dropout on the attention weights: the shipped `v3c` recipe (6x144,
context 128, batch 32, modern, Muon, dropout 0.1) trained for the same time, each variant in a fresh
process, the whole validation split of Tiny Shakespeare scored at the end.

    python benchmarks/bench_dropout_quality.py [--budget 900] [--variants everywhere,residual]
    python benchmarks/bench_dropout_quality.py --steps 5000 --variants residual   # the shipped run's length

`everywhere`: dropout on the embeddings, the attention weights and both residual branches of each
block (the recipe as shipped); `residual`: the same without the attention weights' dropout, which
lets a CPU keep its fused attention (see bench_dropout.py for what each costs a step); `none`: no
dropout at all. `compile` is left to decide itself (auto: measured at the run's start where it is
long enough, and counted in its time).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = dict(n_layer=6, n_head=6, n_embd=144, block_size=128, batch_size=32, dropout=0.1, eval_interval=500,
              warmup_iters=100, learning_rate=3e-3, min_lr=3e-4)


def one(variant: str, budget: float, steps: int | None = None, eager: bool = False) -> dict:
    from repytilian.api import TrainOptions, train

    # `residual`: every block's attention keeps its weights whole (`attention_dropout` 0); `none`: no dropout
    whole = {"residual": {"attention_dropout": 0.0}, "none": {"dropout": 0.0}}.get(variant, {})
    # a time budget, or the shipped run's fixed number of steps (its schedule: warm-up, cosine to the end)
    length = {"max_iters": steps} if steps else {"max_seconds": budget}
    result = train(TrainOptions(settings="speedrun", arch="modern", iterations="default" if steps else "forever",
                                out=None, progress=False, seed=1337, overrides={**RECIPE, **whole, **length,
                                                                  **({"compile": False} if eager else {})}))
    if result.stopped_by:  # Ctrl+C: no whole-split score to compare
        raise SystemExit(f"stopped by {result.stopped_by}")
    return {"variant": variant, "budget_s": None if steps else budget, "steps": result.state.step,
            "val_loss_full": result.val_loss, "seconds": result.state.train_seconds,
            "compiled": bool(result.language_model.meta["train"].get("compile"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900)
    parser.add_argument("--variants", default="everywhere,residual")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of --budget seconds")
    parser.add_argument("--eager", action="store_true", help="never compile (compile false instead of auto)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.budget, args.steps, args.eager)))
        return
    from repytilian.runtime.cpu import cpu_name

    length = f"{args.steps:,} steps" if args.steps else f"{args.budget:g} s of training"
    print(f"v3c recipe, {length} each, {cpu_name()}, {date.today().isoformat()}", flush=True)
    for variant in args.variants.split(","):
        steps = (["--steps", str(args.steps)] if args.steps else []) + (["--eager"] if args.eager else [])
        done = subprocess.run([sys.executable, __file__, "--one", variant, "--budget", str(args.budget), *steps],
                              capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{variant:12s} {row['steps']:6,} steps in {row['seconds']:,.0f} s"
              f"{' (compiled)' if row.get('compiled') else ''}  whole-split val loss {row['val_loss_full']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
