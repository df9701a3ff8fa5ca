"""Train the models that ship with Repytilian (models/shakespeare/*) from scratch, and rewrite
their cards and the manifest that the tests check them against.

    python3 scripts/ship_models.py              # all of them, in order (about 50 minutes on 2 cores)
    python3 scripts/ship_models.py v2c words    # some of them
    python3 scripts/ship_models.py --list       # what each one is

Each is trained on Tiny Shakespeare with a fixed number of steps and seed (so a rerun trains the
same recipe; the numbers differ a little between machines and number formats). Its weights are
then stored in float16 when that changes the whole-split validation loss by less than
MAX_LOSS_CHANGE (else bfloat16, else float32); the card states the loss before and after.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repytilian.api import LanguageModel, TrainOptions, train  # noqa: E402
from repytilian.data import DataSource, TokenData  # noqa: E402
from repytilian.data.datasets import dataset_path  # noqa: E402
from repytilian.evaluate import evaluate  # noqa: E402
from repytilian.store.card import read_metrics  # noqa: E402
from repytilian.store.folder import load_model_dir, save_model_dir  # noqa: E402

SHIPPED_DIR = ROOT / "models" / "shakespeare"
MANIFEST = SHIPPED_DIR / "MANIFEST.json"
MAX_LOSS_CHANGE = 0.002  # nats: well under the run-to-run spread of a retrain
SEED = 1337


@dataclass
class Recipe:
    about: str
    tokenizer: str = "characters"
    settings: str = "default"
    arch: str | None = None
    tokenizer_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "v1c": Recipe("characters; 2 layers, 64 wide; 2,000 steps (about 20 s): spelling half-learnt",
                  settings="tiny", overrides=dict(n_layer=2, n_head=4, n_embd=64, max_iters=2000,
                                                  eval_interval=250, warmup_iters=50)),
    "v2c": Recipe("characters; the default preset (4 layers, 128 wide); 4,000 steps (about 3 min): words and names",
                  settings="default", overrides=dict(max_iters=4000, eval_interval=500, warmup_iters=100)),
    "v3c": Recipe("characters; 6 layers, 144 wide, context 128, --arch modern with Muon; 5,000 steps "
                  "(about 30 min): the best of the three",
                  settings="speedrun", arch="modern",
                  overrides=dict(n_layer=6, n_head=6, n_embd=144, block_size=128, batch_size=32, dropout=0.1,
                                 max_iters=5000, eval_interval=500, warmup_iters=100, learning_rate=3e-3,
                                 min_lr=3e-4)),
    "words": Recipe("words (13,333 of them); 4 layers, 64 wide, context 64; 2,500 steps",
                    tokenizer="words", settings="default",
                    overrides=dict(n_layer=4, n_head=4, n_embd=64, block_size=64, dropout=0.1,
                                   max_iters=2500, eval_interval=500, warmup_iters=100)),
    "bpe": Recipe("byte-level BPE (1,024 tokens); the default preset; 3,000 steps",
                  tokenizer="bpe", tokenizer_options={"vocab_size": 1024}, settings="default",
                  overrides=dict(dropout=0.1, max_iters=3000, eval_interval=500, warmup_iters=100)),
}


def whole_split_loss(model, val: Any) -> float:
    return evaluate(model, val, stride=model.config.block_size, batch_size=32, progress=False).loss


def rounded_to(model, dtype: torch.dtype):
    """A float32 copy of the model whose weights went through `dtype`: what loading it stored so gives."""
    copy = type(model)(model.config)
    copy.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return copy.eval()


def storage_dtype(model, val: Any) -> tuple[torch.dtype, Any, float, float]:
    """The smallest number format whose rounding keeps the val loss within MAX_LOSS_CHANGE, the
    model as rounded to it, and the loss before and after."""
    before = whole_split_loss(model, val)
    for dtype in (torch.float16, torch.bfloat16):
        rounded = rounded_to(model, dtype)
        after = whole_split_loss(rounded, val)
        if abs(after - before) <= MAX_LOSS_CHANGE:
            return dtype, rounded, before, after
    return torch.float32, model, before, before


def ship(name: str, recipe: Recipe) -> None:
    out = SHIPPED_DIR / name
    work = SHIPPED_DIR / f".training-{name}"
    shutil.rmtree(work, ignore_errors=True)
    command = f"python3 scripts/ship_models.py {name}"
    print(f"== {name}: {recipe.about}", file=sys.stderr)
    started = time.time()
    train(TrainOptions(data=DataSource("dataset", "shakespeare"), tokenizer=recipe.tokenizer,
                       tokenizer_options=dict(recipe.tokenizer_options), settings=recipe.settings, arch=recipe.arch,
                       overrides=dict(recipe.overrides), out=str(work), seed=SEED, progress=sys.stderr.isatty()))
    wall = time.time() - started
    loaded = load_model_dir(work)
    model = loaded.model.eval()
    text = dataset_path("shakespeare").read_text(encoding="utf-8")
    val = TokenData.from_text(text, loaded.tokenizer).val
    dtype, stored, before, after = storage_dtype(model, val)
    sample = LanguageModel(stored, loaded.tokenizer).generate("", 400, seed=0)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("format", "format_version", "created_by", "model",
                                                              "tokenizer")}
    meta["weights"] = {"dtype": str(dtype).removeprefix("torch."), "val_loss_float32": round(before, 4),
                       "val_loss_stored": round(after, 4)}
    meta["retrain"] = command
    meta["shipped"] = {"about": recipe.about, "wall_seconds": round(wall, 1)}
    save_model_dir(out, stored.to(dtype), loaded.tokenizer, meta, card=True, sample=sample,
                   metrics=read_metrics(work))
    shutil.rmtree(work, ignore_errors=True)
    print(f"== {name}: val loss {before:.4f} (float32), {after:.4f} stored as {dtype}; {wall / 60:.1f} min; "
          f"{sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB", file=sys.stderr)


def file_hashes() -> dict[str, str]:
    """sha256 of every file of every shipped folder, by its path under models/shakespeare/."""
    hashes = {}
    for name in RECIPES:
        folder = SHIPPED_DIR / name
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                hashes[f"{name}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"which to train (default all: {', '.join(RECIPES)})")
    parser.add_argument("--list", action="store_true", help="say what each one is and stop")
    args = parser.parse_args(argv)
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name:<6} {recipe.about}")
        return 0
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; shipped: {', '.join(RECIPES)}")
    for name in args.names or RECIPES:
        ship(name, RECIPES[name])
    MANIFEST.write_text(json.dumps(file_hashes(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {MANIFEST.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
