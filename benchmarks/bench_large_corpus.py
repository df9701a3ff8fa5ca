"""Training on a corpus larger than memory: peak memory and time, first run and cached re-run.

    python benchmarks/bench_large_corpus.py                 # a generated 2 GB folder of text
    python benchmarks/bench_large_corpus.py --gb 0.5 --json large.json
    python benchmarks/bench_large_corpus.py --gb 0.5 --format jsonl      # or parquet: records' "text"

Generates a folder of text files (random lines from a made-up vocabulary, seeded), then runs
`repytilian train -p FOLDER -s tiny -i quick` three times in fresh processes and reports each
one's wall time and peak RSS (from the kernel, per process):
  baseline  the same command on the first megabyte of the text (in memory: the model, torch, Python)
  first     the whole folder: read, tokenizer trained, ids encoded into the token cache, trained
  cached    the whole folder again: the text is hashed, the tokenizer and ids come from the cache
The goal: the large runs' peak RSS stays within 1 GB of the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE_MB = 64


def make_corpus(folder: Path, gigabytes: float, seed: int = 0, form: str = "text") -> int:
    """Files of FILE_MB of random lines (as text, or as JSONL or Parquet records of ten lines each,
    in a "text" field); returns the total size of the text in bytes."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tha", "vo", "su", "el", "dor", "in", "ash", "wy"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3000)})
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 14))).capitalize() + rng.choice(".,;!?")
             for _ in range(20000)]
    folder.mkdir(parents=True, exist_ok=True)
    total, index = 0, 0
    target = int(gigabytes * 2**30)
    while total < target:
        size = min(FILE_MB * 2**20, target - total)
        text = "\n".join(rng.choices(lines, k=size // 40 + 1)).encode("utf-8")[:size]
        text = text[: text.rfind(b"\n") + 1] or text
        write_part(folder / f"part-{index:04d}", text, form)
        total += len(text)
        index += 1
    return total


def write_part(stem: Path, text: bytes, form: str) -> None:
    if form == "text":
        stem.with_suffix(".txt").write_bytes(text)
        return
    lines = text.decode("utf-8").splitlines()
    records = ["\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]
    if form == "jsonl":
        stem.with_suffix(".jsonl").write_text("".join(json.dumps({"id": i, "text": r}) + "\n"
                                                      for i, r in enumerate(records)), encoding="utf-8")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": records}), stem.with_suffix(".parquet"), row_group_size=20_000)


def run(args: list[str], env: dict[str, str]) -> dict:
    """One training command in a fresh process: wall time, peak RSS, and its stderr."""
    cmd = [sys.executable, "-m", "repytilian", "train", *args]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    tokenized = re.search(r"tokenized in ([\d.]+)s", stderr)
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "tokenize_seconds": float(tokenized.group(1)) if tokenized else None,
        "from_cache": "token ids from the cache" in stderr,
        "tail": stderr.strip().splitlines()[-2:],
    }


def iter_text(path: Path):
    """The text of a part, as the training command reads it (for the baseline's first megabyte)."""
    sys.path.insert(0, str(ROOT))
    from repytilian.data.textfiles import file_pieces

    yield file_pieces(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="corpus size in GiB (default 2)")
    parser.add_argument("--tokenizer", default="characters")
    parser.add_argument("--workdir", help="where to put the corpus, cache and models (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--format", choices=("text", "jsonl", "parquet"), default="text",
                        help="how the corpus is stored: text files, or JSONL / Parquet records with a text field")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="repytilian-large-"))
    corpus = work / "corpus"
    env = {**os.environ, "REPYTILIAN_HOME": str(work / "home"), "REPYTILIAN_NO_PROGRESS": "1",
           "PYTHONPATH": str(ROOT)}
    try:
        t0 = time.perf_counter()
        size = make_corpus(corpus, args.gb, form=args.format)
        print(f"corpus: {size / 2**30:.2f} GiB of text as {args.format} in {len(list(corpus.iterdir()))} files "
              f"(generated in {time.perf_counter() - t0:.0f}s) under {work}")
        common = ["-z", args.tokenizer, "-s", "tiny", "-i", "quick", "--seed", "1"]
        head = "".join(next(iter_text(sorted(corpus.iterdir())[0]))).encode("utf-8")[: 2**20]
        small = work / "small.txt"
        small.write_bytes(head[: head.rfind(b"\n") + 1])
        rows = {
            "baseline": run(["-d", str(small), "-m", str(work / "small"), *common], env),
            "first": run(["-p", str(corpus), "-m", str(work / "large"), *common], env),
            "cached": run(["-p", str(corpus), "-m", str(work / "large"), *common], env),
        }
        cache_bytes = sum(p.stat().st_size for p in (work / "home").rglob("*") if p.is_file())
        base = rows["baseline"]["peak_rss_mb"]
        print(f"\n{'run':<9} {'wall s':>7} {'tokenize s':>10} {'peak RSS MB':>11} {'vs baseline':>11}  cache")
        for name, r in rows.items():
            extra = "" if name == "baseline" else f"{r['peak_rss_mb'] - base:+,}"
            tok = "-" if r["tokenize_seconds"] is None else f"{r['tokenize_seconds']:.1f}"
            print(f"{name:<9} {r['seconds']:>7.1f} {tok:>10} {r['peak_rss_mb']:>11,} {extra:>11}  "
                  f"{'hit' if r['from_cache'] else '-'}")
        print(f"token cache on disk: {cache_bytes / 2**30:.2f} GiB; "
              f"largest growth over the baseline: {max(r['peak_rss_mb'] for r in rows.values()) - base:,} MB "
              f"(goal: under 1,024)")
        print("last lines of the cached run:", *rows["cached"]["tail"], sep="\n  ")
        if args.json:
            Path(args.json).write_text(json.dumps({"corpus_bytes": size, "tokenizer": args.tokenizer,
                                                   "cache_bytes": cache_bytes, "runs": rows}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
