"""What a user waits for: `generate.py -m models/shakespeare/v2c -t 100` from the command to its
last token, and where that time goes.

    python benchmarks/bench_startup.py [--repeats 5] [--model models/shakespeare/v2c] [--tokens 100]

Two parts. The whole command as a user runs it (a new process each time; the median of
--repeats), next to a process that only imports torch: the difference is ours. Then, in one
fresh process per repeat, the steps of that start-up timed one after another: importing torch,
importing the rest of what generate.py imports, opening the model folder (config, tokenizer,
weights checked and read), the first token (the decoder's copy of the model, the prompt), and the
remaining tokens.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from repytilian.cli import generate_script  # what generate.py imports
from repytilian.cli import generate as verb
from repytilian.api import load_model
t2 = time.perf_counter()
lm = load_model(sys.argv[2])
t3 = time.perf_counter()
first = None
for i, piece in enumerate(lm.stream("", int(sys.argv[3]), seed=1337)):
    if first is None:
        first = time.perf_counter()
t4 = time.perf_counter()
print(json.dumps({"import torch": t1 - t0, "import the rest": t2 - t1, "open the model folder": t3 - t2,
                  "first token": first - t3, "the other tokens": t4 - first}))
"""


def whole(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first warms the file cache
        t0 = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="models/shakespeare/v2c")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    command = [sys.executable, "generate.py", "-m", args.model, "-t", str(args.tokens)]
    generate = whole(command, args.repeats)
    torch_only = whole([sys.executable, "-c", "import torch"], args.repeats)
    print(f"{' '.join(['generate.py', *command[2:]])}: {generate:.2f} s from the command to the last token "
          f"(median of {args.repeats}); a process that only imports torch: {torch_only:.2f} s")
    runs = [json.loads(subprocess.run([sys.executable, "-c", PHASES, str(ROOT), args.model, str(args.tokens)],
                                      cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(args.repeats)]
    phases = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    for name, seconds in phases.items():
        print(f"  {name:24s} {seconds * 1000:7.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"command_s": generate, "torch_only_s": torch_only, "phases_s": phases},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
