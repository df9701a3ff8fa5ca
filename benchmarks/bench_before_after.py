"""Speed of this checkout against another one, side by side in one process: training tokens/s (the
Trainer's step) and batch-1 greedy decoding tokens/s (LanguageModel.generate), for a redesign that
must not change either.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_before_after.py --before /tmp/before --rounds 5

The other checkout's package is loaded under another name beside this one (its imports are all
relative), and the two are measured in turn, A B B A A B ..., so that neither always goes first
and a machine whose speed drifts favours neither; the medians and the median of the pairwise ratios are printed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (name, layers, heads, width, context): the lecture's default-sized model and the hyper shape
DECODE_SHAPES = [("default", 4, 4, 128, 128), ("hyper", 6, 6, 384, 256)]
TRAIN_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)  # tiny
TRAIN_BATCH = 12


def load_package(checkout: Path, alias: str):
    """The `repytilian` package of another checkout, imported as `alias`."""
    folder = Path(tempfile.mkdtemp()) / alias
    shutil.copytree(checkout / "repytilian", folder)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(alias)


def decoding(pkg, shape: tuple, tokens: int) -> float:
    """Greedy tokens/s at batch 1 through LanguageModel.generate (random weights: speed does not
    depend on them), the best of three runs after a warm-up."""
    name, n_layer, n_head, n_embd, block = shape
    model_mod = importlib.import_module(f"{pkg.__name__}.model")
    tok_mod = importlib.import_module(f"{pkg.__name__}.tokenizers")
    api = importlib.import_module(f"{pkg.__name__}.api")
    tokenizer = tok_mod.tokenizer_class("characters").train("".join(chr(32 + i) for i in range(65)))
    torch.manual_seed(0)
    model = model_mod.GPT(model_mod.ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=n_layer, n_head=n_head,
                                                n_embd=n_embd, block_size=block)).eval()
    lm = api.LanguageModel(model, tokenizer)
    lm.generate("AB", 8, temperature=0)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        lm.generate("AB", tokens, temperature=0)
        best = min(best, time.perf_counter() - t0)
    return tokens / best


def training(pkg, steps: int) -> float:
    """Tokens/s of the Trainer's step in float32 at the tiny shape, after a few warm-up steps."""
    model_mod = importlib.import_module(f"{pkg.__name__}.model")
    config = importlib.import_module(f"{pkg.__name__}.config")
    corpus = importlib.import_module(f"{pkg.__name__}.data.corpus")
    try:  # the training loop's module: trainer.py, train.py before 2026-12-04
        train = importlib.import_module(f"{pkg.__name__}.trainer")
    except ModuleNotFoundError:
        train = importlib.import_module(f"{pkg.__name__}.train")
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    model = model_mod.GPT(model_mod.ModelConfig(vocab_size=65, **TRAIN_SHAPE))
    cfg = config.TrainConfig(batch_size=TRAIN_BATCH, dtype="float32", max_iters=10_000)
    trainer = train.Trainer(model, corpus.TokenData.split(ids, 0.1), cfg, torch.device("cpu"),
                            report=lambda event: None)
    for _ in range(3):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * TRAIN_BATCH * TRAIN_SHAPE["block_size"] / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path, help="a checkout of the commit to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200, help="tokens a decoding run generates")
    parser.add_argument("--steps", type=int, default=30, help="training steps a run times")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    packages = {"before": load_package(args.before.resolve(), "repytilian_before"),
                "after": importlib.import_module("repytilian")}
    figures: dict[str, dict[str, list[float]]] = {}
    for i in range(args.rounds):
        order = list(packages.items())
        for label, pkg in order if i % 2 == 0 else order[::-1]:  # A B, then B A: neither always goes first
            rows = {f"decode {s[0]} tok/s": decoding(pkg, s, args.tokens) for s in DECODE_SHAPES}
            rows["train tiny tok/s"] = training(pkg, args.steps)
            for what, value in rows.items():
                figures.setdefault(what, {}).setdefault(label, []).append(value)
    print(f"{'figure':<26}{'before':>12}{'after':>12}{'after/before':>14}   (medians of {args.rounds} rounds)")
    for what, runs in figures.items():
        ratios = [a / b for a, b in zip(runs["after"], runs["before"])]
        print(f"{what:<26}{statistics.median(runs['before']):>12,.0f}{statistics.median(runs['after']):>12,.0f}"
              f"{statistics.median(ratios):>14.3f}   (pairs {min(ratios):.3f}-{max(ratios):.3f})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
