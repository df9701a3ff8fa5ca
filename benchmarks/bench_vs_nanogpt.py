"""Our training step against nanoGPT's own model.py, timed on this machine, taking turns.

    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT       # nanoGPT is not part of this project
    python benchmarks/bench_vs_nanogpt.py --nanogpt ~/nanoGPT
    python benchmarks/bench_vs_nanogpt.py --nanogpt ~/nanoGPT --presets tiny,default,hyper --rounds 3

nanoGPT's model.py, at each preset's shape (layers, heads, width, context, biases; vocabulary 65,
no dropout), steps as nanoGPT's train.py steps on a CPU: float32, eager, the optimiser of its
configure_optimizers (torch's AdamW, unfused off CUDA), clip_grad_norm_ at 1.0. Ours steps as
training does (`repytilian bench`'s steps: our AdamW and clipping, the CPU set up as training sets
it), in each number format worth timing here, eager and compiled. Every measurement runs in a
fresh process; the processes take turns, in a rotating order, for `--rounds` rounds, since a
shared machine's speed drifts; the median step of all rounds is quoted. `repytilian bench`'s own
baseline is our model run nanoGPT's way (no checkout needed); this script is the direct check.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repytilian.cli.bench import _in_fresh_process  # noqa: E402
from repytilian.config import build_configs  # noqa: E402
from repytilian.runtime.precision import cpu_bf16  # noqa: E402


def nanogpt_steps(checkout: str, preset: str, steps: int) -> list[float]:
    """Step times of nanoGPT's own model at the preset's shape, stepped as its train.py does on a CPU."""
    import contextlib
    import io

    import torch

    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(checkout) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mcfg, tcfg = build_configs(preset, "default", {"dropout": 0.0})
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        model = module.GPT(module.GPTConfig(block_size=mcfg.block_size, vocab_size=65, n_layer=mcfg.n_layer,
                                            n_head=mcfg.n_head, n_embd=mcfg.n_embd, dropout=0.0, bias=mcfg.bias))
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.99), "cpu")
    x = torch.randint(65, (tcfg.batch_size, mcfg.block_size))

    def step() -> None:
        _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(1 if preset == "hyper" else 2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _nanogpt_in_fresh_process(checkout: str, preset: str, steps: int) -> list[float]:
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--one", checkout, preset, str(steps)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"nanoGPT's model did not run: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT (its model.py is timed)")
    parser.add_argument("--presets", default="tiny,default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process (default 20, hyper 2)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: nanoGPT's steps, in this process
    args = parser.parse_args()
    if args.one:
        checkout, preset, steps = args.one
        print(json.dumps(nanogpt_steps(checkout, preset, int(steps))))
        return 0
    if not args.nanogpt or not (Path(args.nanogpt).expanduser() / "model.py").is_file():
        parser.error("--nanogpt must name a checkout of karpathy/nanoGPT (a folder with its model.py)")
    checkout = str(Path(args.nanogpt).expanduser())
    dtypes = ["float32", "bfloat16"] if cpu_bf16().native else ["float32"]
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_bf16().why if not cpu_bf16().native else 'native bf16'}; "
          f"ms a step, medians of {args.rounds} rounds")
    results = []
    for preset in args.presets.split(","):
        steps = args.steps or (2 if preset == "hyper" else 20)
        groups = ["nanogpt"] + [",".join(f"{d}:{kind}" for d in dtypes) for kind in ("eager", "compiled")]
        times: dict[str, list[float]] = {}
        for i in range(args.rounds):
            for group in groups[i % len(groups):] + groups[:i % len(groups)]:
                if group == "nanogpt":
                    times.setdefault("nanoGPT's model.py, float32", []).extend(
                        _nanogpt_in_fresh_process(checkout, preset, steps))
                    continue
                for row in _in_fresh_process(["throughput", preset, group, str(steps), "1"]):
                    name = f"ours, {row['dtype']}{', compiled' if row['compiled'] else ''}"
                    times.setdefault(name, []).extend(row["times"])
        base = statistics.median(times.pop("nanoGPT's model.py, float32"))
        print(f"{preset}: nanoGPT's model.py {1000 * base:.1f}")
        for name, ts in times.items():
            ms = statistics.median(ts)
            print(f"{preset}: {name} {1000 * ms:.1f}, {base / ms:.2f}x")
            results.append({"preset": preset, "variant": name, "ms": round(1000 * ms, 2),
                            "nanogpt_ms": round(1000 * base, 2), "speedup": round(base / ms, 2)})
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
