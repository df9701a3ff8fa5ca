"""`repytilian bench`: training speed and quality per time on this machine, printed and as JSON.

- the machine's yardstick: a 2048x2048 matmul in float32 and bfloat16 (GFLOP/s); on a CPU without
  native bf16 (precision.cpu_bf16) every bf16 measurement is left out and the table says so;
- training throughput of each preset's shape in float32 and bf16 autocast (optionally compiled):
  tokens/s, achieved model GFLOP/s (6 N + 12 L T C per token, as nanoGPT counts), % of the
  measured peak for that precision, the speed-up over "nanoGPT's way" of running the same model
  (float32, eager, AdamW unfused as nanoGPT takes it on a CPU, the allocator and threads left
  alone), and each variant's peak RSS;
- the training loop's overhead at the first preset: drawing batches, and the loop's own time
  around the steps (progress bar, loss checks), as shares of the step time;
- quality per time (`--budget SECONDS`): a preset trained on Tiny Shakespeare for that much
  training time, evaluated on the whole validation split.
The variants of a preset take turns for `--repeats` rounds in three kinds of process (the nanoGPT
baseline, our eager variants, our compiled ones) and the median step is quoted: a shared
machine's speed drifts by tens of percent within seconds, and separate runs one after another
would compare its moods, not the variants. Peak RSS comes from a fresh process per variant.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..data.datasets import dataset_path
from ..errors import EXIT_USER_ERROR, RepytilianError
from ..runtime.cpu import cpu_name
from ..runtime.device import prepare_for_training
from ..runtime.precision import DTYPES, cpu_bf16, machine_summary, resolve_dtype
from .common import seconds
from .flags import in_flags


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


def _training_step(preset: str, dtype: str, compile: bool, nanogpt_way: bool = False):
    """A model at the preset's shape and one optimiser step of it on a fixed random batch: clipping
    and AdamW as training does them, or `nanogpt_way`, as nanoGPT's train.py does on a CPU (its
    configure_optimizers takes torch's fused AdamW on CUDA only, then clip_grad_norm_ and step)."""
    from ..config import build_configs
    from ..model import GPT
    from ..optim import clip_and_step, make_optimizer
    from ..runtime.precision import autocast

    mcfg, tcfg = build_configs(preset, "default", {"dropout": 0.0})
    mcfg.vocab_size = 65
    torch.manual_seed(0)
    model = GPT(mcfg)
    forward = torch.compile(model) if compile else model
    opt = make_optimizer(model, "adamw", 1e-4, 0.1, (0.9, 0.99), fused=not nanogpt_way)
    device = torch.device("cpu")
    x = torch.randint(65, (tcfg.batch_size, mcfg.block_size))

    def step() -> None:
        with autocast(device, dtype):
            _, loss = forward(x, x)
        loss.backward()
        if nanogpt_way:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        else:
            clip_and_step(opt, model.parameters(), 1.0)
        opt.zero_grad(set_to_none=True)

    return model, x.shape, step


def throughput(preset: str, variants: list[tuple[str, bool]], steps: int, tuned: bool = True) -> list[dict]:
    """`steps` step times of each (dtype, compiled) variant at the preset's shape, one after the
    other in this process: one round of the turns that `main` has these processes take.
    `tuned` sets the CPU up as training does (allocator, threads, repeatable compiled steps); without
    it, float32 eager with nanoGPT's optimiser step is how nanoGPT runs the same model."""
    if tuned:
        prepare_for_training(torch.device("cpu"))
    built = {}
    for dtype, compiled in variants:
        model, (B, T), step = _training_step(preset, dtype, compiled, nanogpt_way=not tuned)
        t0 = time.perf_counter()
        step()  # warm-up (and compilation)
        first = time.perf_counter() - t0
        if preset != "hyper":
            step()
        built[dtype, compiled] = (model, B, T, step, first, [])
    for model, B, T, step, first, times in built.values():
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return [_row(preset, dtype, compiled, model, B, T, times, first)
            for (dtype, compiled), (model, B, T, step, first, times) in built.items()]


def _row(preset: str, dtype: str, compiled: bool, model, B: int, T: int, times: list[float], first: float) -> dict:
    """What a variant's measurement carries from its process (figures come from `_figures`)."""
    return {
        "preset": preset, "dtype": dtype, "compiled": compiled, "batch": B, "block": T,
        "params_m": round(model.num_params() / 1e6, 2), "first_step_s": round(first, 1),
        "flops_per_token": model_flops_per_token(model.num_params(), model.config.n_layer, T, model.config.n_embd),
        "times": [round(t, 6) for t in times],
    }


def _figures(row: dict, note: str | None = None) -> dict:
    """A variant's figures from all of its step times (merged over processes), without the times."""
    times = row.pop("times")
    per_step = statistics.median(times)
    tokens_per_s = row["batch"] * row["block"] / per_step
    row.update(ms_per_step=round(per_step * 1000, 1), tokens_per_s=round(tokens_per_s),
               gflops=round(tokens_per_s * row["flops_per_token"] / 1e9, 1), steps_timed=len(times))
    if note:
        row["note"] = note
    return row


def peak_memory(preset: str, dtype: str, compile: bool) -> dict:
    """Peak RSS of a fresh process that trains two steps of one variant (the CPU set up as in training)."""
    prepare_for_training(torch.device("cpu"))
    _, _, step = _training_step(preset, dtype, compile)
    step()
    step()
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def loop_overhead(preset: str, dtype: str, steps: int) -> dict:
    """What the training loop adds to its steps: the time to draw a batch from the data (part of
    train_step), and the loop's own time around train_step (progress bar, loss reads, stop checks),
    both against train_step's time, measured over the same `steps` steps of Trainer.run."""
    import numpy as np

    from ..config import build_configs
    from ..data.corpus import TokenData, get_batch
    from ..model import GPT
    from ..trainer import Trainer, TrainState

    mcfg, tcfg = build_configs(preset, "default", {"dropout": 0.0, "dtype": dtype, "eval_iters": 1})
    mcfg.vocab_size = 65
    torch.manual_seed(0)
    model = GPT(mcfg)
    ids = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    tcfg.eval_interval = 10**9
    prepare_for_training(torch.device("cpu"))
    tcfg.dtype = resolve_dtype(tcfg.dtype, torch.device("cpu"), model, tcfg.batch_size)
    trainer = Trainer(model, TokenData.split(ids, 0.1), tcfg, torch.device("cpu"), TrainState(), report=lambda e: None)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(100):
        get_batch(trainer.data.train, tcfg.batch_size, mcfg.block_size, gen)
    batch_s = (time.perf_counter() - t0) / 100
    trainer.train_step()  # warm-up
    marks: list[tuple[float, float]] = []  # (wall clock, train_step seconds so far) after each step
    trainer.state.max_iters = trainer.state.step + steps + 1
    trainer.run(progress=True, after_step=lambda: marks.append((time.perf_counter(), trainer.state.train_seconds)))
    (wall0, train0), (wall1, train1) = marks[0], marks[-2]  # the last step also evaluates: left out
    step_s = (train1 - train0) / (len(marks) - 2)
    return {"preset": preset, "dtype": tcfg.dtype, "steps": len(marks) - 2, "step_ms": round(1000 * step_s, 2),
            "batch_ms": round(1000 * batch_s, 3), "batch_pct": round(100 * batch_s / step_s, 2),
            "loop_pct": round(100 * ((wall1 - wall0) - (train1 - train0)) / (train1 - train0), 2)}


def quality(preset: str, budget: float, dtype: str, overrides: dict | None = None) -> dict:
    from ..api import TrainOptions, train

    result = train(TrainOptions(settings=preset, iterations="forever", out=None, progress=False,
                                overrides={**(overrides or {}), "max_seconds": budget, "dtype": dtype}),
                   log=lambda msg: None)
    if result.stopped_by:  # Ctrl+C: no whole-split score to report
        raise KeyboardInterrupt
    return {"preset": preset, "overrides": overrides or {}, "budget_s": budget,
            "dtype": result.language_model.meta["train"]["dtype"],
            "steps": result.state.step, "tokens": result.state.tokens_seen,
            "val_loss_full": round(result.val_loss, 4),
            "val_bits_per_byte": result.language_model.meta["summary"].get("val_bits_per_byte"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _in_fresh_process(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "repytilian.cli.bench", "--one", *args], capture_output=True, text=True)
    if out.returncode == EXIT_USER_ERROR:  # the measurement's own clear error, whole (it may span lines)
        raise RepytilianError(out.stderr.strip().removeprefix("error: "))
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_one(kind: str, rest: list[str]) -> dict | list[dict]:
    if kind == "throughput":
        variants = [(v.split(":")[0], v.endswith(":compiled")) for v in rest[1].split(",")]
        return throughput(rest[0], variants, int(rest[2]), rest[3] == "1")
    if kind == "memory":
        return peak_memory(rest[0], rest[1], rest[2] == "1")
    if kind == "loop":
        return loop_overhead(rest[0], rest[1], int(rest[2]))
    return quality(rest[0], float(rest[1]), rest[2], json.loads(rest[3]) if len(rest) > 3 else None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repytilian bench", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,default,hyper",
                        help="presets whose throughput to time, comma-separated; 'none' for the --budget runs alone")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd training (slow to start)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per variant and round (default: 20, hyper 2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, the variants taking turns in each")
    parser.add_argument("--budget", type=seconds, action="append", default=[],
                        help="quality per time: train --quality-preset for this many seconds (or 15m; repeatable)")
    parser.add_argument("--quality-preset", default="default")
    parser.add_argument("--loop-steps", type=int, default=200,
                        help="steps per round of the training-loop overhead measurement (first preset)")
    parser.add_argument("--no-loop", action="store_true", help="skip the training-loop overhead measurement")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement, in this process
    return parser


def _one(what: list[str]) -> int:
    try:
        print(json.dumps(_measure_one(what[0], what[1:])))
    except RepytilianError as e:
        print(f"error: {in_flags(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _preset_rows(preset: str, args: argparse.Namespace, variants: list[tuple[str, bool]],
                 peak: dict[str, float]) -> list[dict]:
    """One preset's throughput rows, printed as they are measured."""
    steps = args.steps or (2 if preset == "hyper" else 20)
    # Three kinds of process take turns, one round each, in a rotating order, so all see the
    # same machine: the baseline, nanoGPT's way (float32, eager, allocator and threads left
    # alone); our eager variants; our compiled ones (apart, because Inductor's compile workers
    # stay alive and take CPU from whatever shares their process).
    groups = [("base", "float32:eager", "0")]
    for compiled in sorted({c for _, c in variants}):
        names = ",".join(f"{d}:{'compiled' if c else 'eager'}" for d, c in variants if c == compiled)
        groups.append(("ours", names, "1"))
    merged: dict[tuple, dict] = {}
    try:
        for i in range(args.repeats):
            for which, names, keep in groups[i % len(groups):] + groups[:i % len(groups)]:
                for r in _in_fresh_process(["throughput", preset, names, str(steps), keep]):
                    key = (which, r["dtype"], r["compiled"])
                    if key in merged:
                        merged[key]["times"] += r["times"]
                    else:
                        merged[key] = r
    except RuntimeError as e:
        print(f"{preset:<8} failed: {e}")
        return []
    base = merged.pop(("base", "float32", False))
    measured = [_figures(base, "float32 (nanoGPT's way)")] + [_figures(r) for r in merged.values()]
    for r in measured:
        r["pct_of_peak"] = round(100 * r["gflops"] / peak[r["dtype"]], 1)
        r["speedup_vs_nanogpt_way"] = round(r["tokens_per_s"] / measured[0]["tokens_per_s"], 2)
        r["peak_rss_mb"] = _in_fresh_process(["memory", preset, r["dtype"], "1" if r["compiled"] else "0"])[
            "peak_rss_mb"] if "note" not in r else None
        label = r.get("note", f"{r['dtype']}{', compiled' if r['compiled'] else ''}")
        rss = r["peak_rss_mb"] if r["peak_rss_mb"] is not None else "-"
        print(f"{preset:<8} {label:<26} {r['params_m']:>6}M {r['ms_per_step']:>9} {r['tokens_per_s']:>9,} "
              f"{r['gflops']:>8} {r['pct_of_peak']:>6}% {r['speedup_vs_nanogpt_way']:>7.2f}x {rss:>7}")
    return measured


def _machine(args: argparse.Namespace) -> tuple[str, list[str], dict[str, float]]:
    """The machine in words, the number formats worth timing on it, and its matmul peak in each."""
    machine = f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs"
    print(f"repytilian bench, {time.strftime('%Y-%m-%d')}, {machine}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {machine_summary()}")
    if torch.cuda.is_available():  # a GPU user would otherwise read CPU figures as the GPU's
        print(f"this times the CPU; the GPU here ({torch.cuda.get_device_name(0)}) is measured by `make gpu-check` "
              "(benchmarks/gpu_check.py)")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not cpu_bf16().native and "bfloat16" in dtypes:
        # Emulated bf16 is ~100x slower: timing it would take most of an hour and teach nothing.
        print(f"no native bf16 on this CPU ({cpu_bf16().why}): bf16 rows left out, float32 is what training uses")
        dtypes.remove("bfloat16")
    peak = {d: matmul_gflops(DTYPES[d] or torch.float32) for d in ["float32"] + [d for d in dtypes if d != "float32"]}
    print("matmul 2048^2: " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peak.items()))
    return machine, dtypes, peak


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        return _one(args.one)
    # Mistakes that would only show after minutes of timing are found first.
    from ..config import SETTINGS, build_configs

    presets = [p for p in args.presets.split(",") if p and p != "none"]
    wanted = [(p, "--presets") for p in presets] + ([(args.quality_preset, "--quality-preset")] if args.budget else [])
    for preset, flag in wanted:
        if preset not in SETTINGS:  # `auto` too: it is fitted to a text, and bench times fixed shapes
            raise RepytilianError(f"{flag}: unknown preset {preset!r}; choose one of: {', '.join(SETTINGS)}")
        build_configs(preset)
    if args.budget:
        dataset_path("shakespeare")
    machine, dtypes, peak = _machine(args)
    variants = [(dtype, compiled) for dtype in dtypes for compiled in ([False, True] if args.compile else [False])]
    if presets:
        print(f"{'preset':<8} {'variant':<26} {'params':>7} {'ms/step':>9} {'tokens/s':>9} "
              f"{'GFLOP/s':>8} {'% peak':>7} {'speed-up':>8} {'RSS MB':>7}")
    rows = [r for preset in presets for r in _preset_rows(preset, args, variants, peak)]
    loop = None
    if presets and not args.no_loop:
        loop = _in_fresh_process(["loop", presets[0], "auto", str(args.loop_steps)])
        print(f"training loop overhead at {loop['preset']} ({loop['dtype']}, {loop['steps']} steps of "
              f"{loop['step_ms']} ms): drawing batches {loop['batch_pct']}%, the loop around the steps "
              f"(progress events, loss checks) {loop['loop_pct']}%")
    quality_rows = []
    for budget in args.budget:
        r = _in_fresh_process(["quality", args.quality_preset, str(budget), "auto"])
        quality_rows.append(r)
        print(f"quality: {r['preset']} for {budget:g} s of training ({r['dtype']}): {r['steps']:,} steps, "
              f"{r['tokens']:,} tokens, val loss {r['val_loss_full']} (whole validation split; "
              f"{r.get('val_bits_per_byte')} bits per byte), RSS {r['peak_rss_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                                               "matmul_gflops": peak, "throughput": rows, "loop_overhead": loop,
                                               "quality": quality_rows}, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
