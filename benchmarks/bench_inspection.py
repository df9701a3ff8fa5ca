"""How long each inspection view takes: a 256-token text on a `-s hyper` model (random weights:
the time does not depend on them), as the server and `repytilian inspect` compute it.

    python benchmarks/bench_inspection.py [--repeats 5] [--tokens 256]

Prints the median milliseconds of each view (attention for every layer and head, the logit lens,
the embeddings' projection, surprise) after a warm-up, and the size of every head's attention as
JSON lists and as /api/inspect sends it.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repytilian import inspection  # noqa: E402
from repytilian.config import SETTINGS  # noqa: E402
from repytilian.model import GPT, ModelConfig  # noqa: E402
from repytilian.runtime.cpu import cpu_name  # noqa: E402
from repytilian.tokenizers import tokenizer_class  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args(argv)
    tokenizer = tokenizer_class("characters").train("".join(chr(c) for c in range(32, 127)) + "\n")
    shape = {k: v for k, v in SETTINGS["hyper"].items() if k in ModelConfig.__dataclass_fields__}
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, **{**shape, "dropout": 0.0})).eval()
    ids = torch.randint(tokenizer.vocab_size, (min(args.tokens, model.config.block_size),)).tolist()
    views = {"attention": lambda: inspection.attention(model, tokenizer, ids),
             "logit lens": lambda: inspection.logit_lens(model, tokenizer, ids),
             "embeddings": lambda: inspection.embeddings(model, tokenizer),
             "surprise": lambda: inspection.surprise(model, tokenizer, ids)}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; `hyper` shape "
          f"({model.num_params() / 1e6:.1f}M), a text of {len(ids)} tokens:")
    for name, view in views.items():
        view()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            view()
            times.append(time.perf_counter() - t0)
        print(f"  {name:11s} {statistics.median(times) * 1000:7.1f} ms")
    weights = inspection.attention(model, tokenizer, ids).weights
    as_lists = len(json.dumps(weights.round(4).tolist()))
    as_bytes = len(base64.b64encode((weights * 255).round().astype("uint8").tobytes()))
    print(f"  every head's attention: {weights.size:,} weights, {as_lists / 1e6:.1f} MB as JSON lists, "
          f"{as_bytes / 1e6:.1f} MB as the server sends them (a byte each, base64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
