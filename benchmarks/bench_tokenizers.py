"""Tokenizer throughput and memory on a large corpus: train time, encode MB/s, peak RSS.

    python benchmarks/bench_tokenizers.py               # 100 MB made of Tiny Shakespeare, repeated
    python benchmarks/bench_tokenizers.py --mb 10 --json out.json

Each tokenizer runs in a fresh process, so the peak RSS it reports is its own. Encoding goes in
chunks into a numpy array: the peak stays near the text itself (4 bytes a character at most, as
Python holds it) plus the id array, with no Python list of ids for the whole corpus.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def corpus(mb: float) -> str:
    from repytilian.data import DataSource, load_text

    base = load_text(DataSource("dataset", "shakespeare"))
    repeat = max(1, int(mb * 1e6 / len(base.encode("utf-8")) + 0.999))
    return base * repeat


def run_one(name: str, mb: float, vocab_size: int) -> dict:
    from repytilian.tokenizers import tokenizer_class

    text = corpus(mb)
    size_mb = len(text.encode("utf-8")) / 1e6
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cls = tokenizer_class(name)
    t0 = time.perf_counter()
    tok = cls.train(text, **({"vocab_size": vocab_size} if name == "bpe" else {}))
    t1 = time.perf_counter()
    ids = tok.encode_array(text)
    t2 = time.perf_counter()
    return {
        "tokenizer": name, "corpus_mb": round(size_mb, 1), "vocab_size": tok.vocab_size, "tokens": int(len(ids)),
        "chars_per_token": round(len(text) / len(ids), 3), "train_s": round(t1 - t0, 2),
        "encode_s": round(t2 - t1, 2), "encode_mb_s": round(size_mb / (t2 - t1), 2),
        "rss_after_loading_mb": round(rss_before), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (default 100)")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("-z", "--tokenizer", action="append", help="default: characters, words, bpe")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: measure one tokenizer in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args.mb, args.vocab_size)))
        return
    rows = []
    for name in args.tokenizer or ["characters", "words", "bpe"]:
        out = subprocess.run([sys.executable, __file__, "--only", name, "--mb", str(args.mb),
                              "--vocab-size", str(args.vocab_size)], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout))
    print(f"tokenizer encoding, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"{'tokenizer':<11} {'MB':>6} {'vocab':>7} {'tokens':>12} {'chars/tok':>9} {'train s':>8} "
          f"{'encode s':>9} {'MB/s':>7} {'RSS text MB':>11} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['tokenizer']:<11} {r['corpus_mb']:>6} {r['vocab_size']:>7,} {r['tokens']:>12,} "
              f"{r['chars_per_token']:>9} {r['train_s']:>8} {r['encode_s']:>9} {r['encode_mb_s']:>7} "
              f"{r['rss_after_loading_mb']:>11} {r['peak_rss_mb']:>11}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
