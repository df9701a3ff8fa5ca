"""`repytilian bench`: training speed and quality per time on this machine, printed and as JSON.

- the machine's yardstick: a 2048x2048 matmul in float32 and bfloat16 (GFLOP/s);
- training throughput of each preset's shape in float32 and bf16 autocast (optionally compiled):
  tokens/s, achieved model GFLOP/s (6 N + 12 L T C per token, as nanoGPT counts), % of the
  measured peak for that precision, the speed-up over the same shape in float32 eager (nanoGPT's
  way of running it), and the run's peak RSS;
- the training loop's overhead: a step inside the real loop (random batches, the LR schedule, the
  progress bar) against the bare step, at the first preset;
- quality per time (`--budget SECONDS`): a preset trained on Tiny Shakespeare for that much
  training time, evaluated on the whole validation split.
Every figure is the median of `--repeats` runs; each run is a fresh process, so RSS is its own,
and the repeats take turns, so a slow spell of a shared machine does not favour one row.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def model_flops_per_token(n_params: int, n_layer: int, block_size: int, n_embd: int) -> float:
    return 6 * n_params + 12 * n_layer * block_size * n_embd


def throughput(preset: str, dtype: str, compile: bool, steps: int) -> dict:
    """Train `steps` steps of random data at the preset's shape; tokens/s over the steps after warm-up."""
    from .config import build_configs
    from .model import GPT
    from .precision import autocast

    mcfg, tcfg = build_configs(preset, "default", {"dropout": 0.0})
    mcfg.vocab_size = 65
    torch.manual_seed(0)
    model = GPT(mcfg)
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-4, fused=True)
    device = torch.device("cpu")
    B, T = tcfg.batch_size, mcfg.block_size
    x = torch.randint(65, (B, T))

    def step() -> None:
        with autocast(device, dtype):
            _, loss = forward(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times)
    tokens_per_s = B * T / per_step
    flops = model_flops_per_token(model.num_params(), mcfg.n_layer, T, mcfg.n_embd)
    return {
        "preset": preset, "dtype": dtype, "compiled": compile, "batch": B, "block": T,
        "params_m": round(model.num_params() / 1e6, 2), "ms_per_step": round(per_step * 1000, 1),
        "tokens_per_s": round(tokens_per_s), "gflops": round(tokens_per_s * flops / 1e9, 1),
        "first_step_s": round(first, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def loop_overhead(preset: str, dtype: str, steps: int, rounds: int = 5) -> dict:
    """How much longer a step takes inside the real training loop (random batches from the data,
    the LR schedule, the progress bar and its loss reads) than the bare step on a fixed batch.
    The two take turns for `rounds` rounds; the median round is quoted."""
    import numpy as np

    from .config import build_configs
    from .data import TokenData
    from .model import GPT
    from .precision import autocast
    from .train import Trainer, TrainState

    mcfg, tcfg = build_configs(preset, "default", {"dropout": 0.0, "dtype": dtype, "eval_iters": 1})
    mcfg.vocab_size = 65
    torch.manual_seed(0)
    model = GPT(mcfg)
    ids = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    tcfg.eval_interval = 10**9
    trainer = Trainer(model, TokenData.split(ids, 0.1), tcfg, torch.device("cpu"), TrainState(), log=lambda m: None)
    x = torch.randint(65, (tcfg.batch_size, mcfg.block_size))

    def bare_step() -> None:
        with autocast(trainer.device, tcfg.dtype):
            _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    bare_step()
    trainer.train_step()  # warm-ups
    bare, loop = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            bare_step()
        bare.append((time.perf_counter() - t0) / steps)
        ends: list[float] = []
        trainer.state.max_iters = trainer.state.step + steps + 1
        trainer.run(progress=True, after_step=lambda: ends.append(time.perf_counter()))
        loop.append((ends[-2] - ends[0]) / (len(ends) - 2))  # the last step also evaluates: left out
    ratios = sorted(lp / b for lp, b in zip(loop, bare))
    return {"preset": preset, "dtype": tcfg.dtype, "bare_ms": round(1000 * statistics.median(bare), 2),
            "loop_ms": round(1000 * statistics.median(loop), 2),
            "overhead_pct": round(100 * (ratios[len(ratios) // 2] - 1), 1)}


def quality(preset: str, budget: float, dtype: str, overrides: dict | None = None) -> dict:
    from .api import TrainOptions, train

    result = train(TrainOptions(settings=preset, iterations="forever", out=None, progress=False,
                                overrides={**(overrides or {}), "max_seconds": budget, "dtype": dtype}),
                   log=lambda msg: None)
    return {"preset": preset, "overrides": overrides or {}, "budget_s": budget,
            "dtype": result.language_model.meta["train"]["dtype"],
            "steps": result.state.step, "tokens": result.state.tokens_seen,
            "val_loss_full": round(result.val_loss, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _in_fresh_process(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "repytilian.bench", "--one", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> dict:
    """The run with the median `key` (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="repytilian bench", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,default,hyper")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd training (slow to start)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 30, hyper 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, action="append", default=[],
                        help="quality per time: train --quality-preset for this many seconds (repeatable)")
    parser.add_argument("--quality-preset", default="default")
    parser.add_argument("--loop-steps", type=int, default=60,
                        help="steps per round of the training-loop overhead measurement (first preset)")
    parser.add_argument("--no-loop", action="store_true", help="skip the training-loop overhead measurement")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement, in this process
    args = parser.parse_args(argv)

    if args.one:
        kind, *rest = args.one
        if kind == "throughput":
            print(json.dumps(throughput(rest[0], rest[1], rest[2] == "1", int(rest[3]))))
        elif kind == "loop":
            print(json.dumps(loop_overhead(rest[0], rest[1], int(rest[2]))))
        else:
            print(json.dumps(quality(rest[0], float(rest[1]), rest[2], json.loads(rest[3]) if len(rest) > 3 else None)))
        return 0

    peak = {"float32": matmul_gflops(torch.float32), "bfloat16": matmul_gflops(torch.bfloat16)}
    print(f"repytilian bench, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"matmul 2048^2: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s")
    configs = [(preset, dtype, compiled) for preset in args.presets.split(",") for dtype in args.dtypes.split(",")
               for compiled in ([False, True] if args.compile else [False])]
    # Repeats go round the configurations (not one configuration's repeats in a row), so a slow
    # spell of a shared machine hits every configuration alike and the ratios stay fair.
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    failed: dict[tuple, str] = {}
    for _ in range(args.repeats):
        for preset, dtype, compiled in configs:
            if (preset, dtype, compiled) in failed:
                continue
            steps = args.steps or (3 if preset == "hyper" else 30)
            try:
                runs[preset, dtype, compiled].append(
                    _in_fresh_process(["throughput", preset, dtype, "1" if compiled else "0", str(steps)]))
            except RuntimeError as e:
                failed[preset, dtype, compiled] = str(e)
    rows = []
    print(f"{'preset':<8} {'dtype':<9} {'compiled':>8} {'params':>7} {'ms/step':>9} {'tokens/s':>9} "
          f"{'GFLOP/s':>8} {'% peak':>7} {'speed-up':>8} {'RSS MB':>7}")
    for preset, dtype, compiled in configs:
        if (preset, dtype, compiled) in failed:
            print(f"{preset:<8} {dtype:<9} {str(compiled):>8} failed: {failed[preset, dtype, compiled]}")
            continue
        r = _median(runs[preset, dtype, compiled], "tokens_per_s")
        r["pct_of_peak"] = round(100 * r["gflops"] / peak[dtype], 1)
        base = runs.get((preset, "float32", False))
        r["speedup_vs_float32_eager"] = round(r["tokens_per_s"] / _median(base, "tokens_per_s")["tokens_per_s"], 2) \
            if base else None
        rows.append(r)
        speedup = f"{r['speedup_vs_float32_eager']:.2f}x" if base else "-"
        print(f"{preset:<8} {dtype:<9} {str(compiled):>8} {r['params_m']:>6}M {r['ms_per_step']:>9} "
              f"{r['tokens_per_s']:>9,} {r['gflops']:>8} {r['pct_of_peak']:>6}% {speedup:>8} {r['peak_rss_mb']:>7}")
    loop = None
    if not args.no_loop:
        loop = _in_fresh_process(["loop", args.presets.split(",")[0], "auto", str(args.loop_steps)])
        print(f"training loop overhead at {loop['preset']} ({loop['dtype']}): a step takes {loop['loop_ms']} ms in "
              f"the loop (random batches, LR schedule, progress bar) against {loop['bare_ms']} ms bare: "
              f"{loop['overhead_pct']:+}%")
    quality_rows = []
    for budget in args.budget:
        r = _in_fresh_process(["quality", args.quality_preset, str(budget), "auto"])
        quality_rows.append(r)
        print(f"quality: {r['preset']} for {budget:g} s of training ({r['dtype']}): {r['steps']:,} steps, "
              f"{r['tokens']:,} tokens, val loss {r['val_loss_full']} (whole validation split), RSS {r['peak_rss_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                                               "matmul_gflops": peak, "throughput": rows, "loop_overhead": loop,
                                               "quality": quality_rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
