"""Architecture options compared by quality per time: val loss after a training-time budget.

    python benchmarks/bench_arch.py --budget 90
    python benchmarks/bench_arch.py --budget 90 --preset speedrun --variant position=rope,norm=rmsnorm

Each variant trains the preset on Tiny Shakespeare for --budget seconds of training (the LR
schedule fitted to the budget) in a fresh process, and is scored on the whole validation split.
A variant is a comma-separated list of fields (ModelConfig's in repytilian/model.py, or
TrainConfig's such as optimizer); "classic" is the preset unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repytilian.cli.bench import _in_fresh_process  # noqa: E402

VARIANTS = [
    "optimizer=adamw",
    "optimizer=adamw,position=rope",
    "optimizer=adamw,norm=rmsnorm,bias=false",
    "optimizer=adamw,activation=relu2",
    "optimizer=adamw,activation=swiglu",
    "optimizer=adamw,tie_embeddings=false",
    "optimizer=adamw,position=rope,qk_norm=true",
    "optimizer=adamw,position=rope,norm=rmsnorm,activation=swiglu,bias=false",
    "optimizer=muon",
    "optimizer=muon,position=rope,norm=rmsnorm,activation=swiglu,bias=false",
]


def parse_variant(text: str) -> dict[str, str]:
    if text == "classic":
        return {}
    return dict(item.split("=", 1) for item in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of training per variant (default 90)")
    parser.add_argument("--preset", default="speedrun")
    parser.add_argument("--variant", action="append", help="repeatable (default: a standard list)")
    parser.add_argument("--extra", default="", help="fields added to every variant, e.g. learning_rate=4e-3")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = []
    print(f"{args.preset} preset, {args.budget:g} s of training each, {time.strftime('%Y-%m-%d')}")
    print(f"{'variant':<78} {'steps':>6} {'val loss':>9}")
    for variant in args.variant or VARIANTS:
        overrides = {**parse_variant(variant), **(parse_variant(args.extra) if args.extra else {})}
        r = _in_fresh_process(["quality", args.preset, str(args.budget), "auto", json.dumps(overrides)])
        r["variant"] = variant
        rows.append(r)
        print(f"{variant:<78} {r['steps']:>6,} {r['val_loss_full']:>9.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
