"""`make gpu-check`: every GPU path run, and measured, on a CUDA machine, in one command of at most 8 minutes.

1. the tests marked `gpu` (tests/test_gpu.py): training in bf16, float16 with the gradient scaler
   and float32; resume on CUDA (exact eagerly); compile on (CUDA graphs) and off; cached decoding equal to the full
   forward pass; torchrun on the GPU and NCCL; the server generating on CUDA; memory given back;
2. `-s hyper` (the lecture's model) trained on Tiny Shakespeare within a time budget (`--budget`,
   default 170 s, the compile counted) and a step count (`--iters`, default 2,000): steps,
   tokens/s, model FLOP utilisation against the GPU's bf16 peak (the steady steps, after the first
   evaluation, and the whole run), and the whole-split validation loss (the goal: at most 1.47 in
   under 3 minutes; nanoGPT's recipe reports 1.4697, the best of its evaluations). 2,000, not
   nanoGPT's 5,000: on an H200 (2026-12-04) a 5,000-step schedule was best at step 1,500 (1.466 on
   its evaluation batches) and then over-fitted to 1.72 on the whole split by step 5,000;
3. decoding from the `-s hyper` model: batch 1, and a batch of 16 prompts at once, in tokens/s;
4. larger shapes (`--mfu-shape`, layers x width x context x batch) trained for a few steps:
   their steady tokens/s and model FLOP utilisation, where a GPU is measured by.

Every figure goes to the JSON file of `--json`, and a line each to stdout.

    python benchmarks/gpu_check.py [--json gpu-check.json] [--budget 170] [--iters 2000] [--mfu-shape 12x768x1024x16]
    python benchmarks/gpu_check.py --dry-run          # on a CPU: the same steps, tiny and short

The dry run (CI runs it) goes through every step on the CPU with the `tiny` preset for a few
seconds: the GPU tests skip, and its figures are labelled as not GPU figures. A GPU machine
without network needs Tiny Shakespeare beside the checkout: copy it into a folder that git ignores
(`mkdir -p .gpu-data && cp ../shared/data/tinyshakespeare.txt .gpu-data/`), send that folder with
the checkout (the script looks there, and in ../shared/data) or point `REPYTILIAN_DATA` (or
`--data`) at it. Packages the machine lacks (the server's starlette and uvicorn) can travel as
wheels in `.whl/`: they are installed from there, without network; without them the server test
skips and says so.
The tests need pytest, numpy, safetensors and tqdm in the Python that runs the script (the
machine's own, with its CUDA build of torch): where one is missing, the script names it and the
pip command, and fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Shapes larger than -s hyper (layers x width x context x batch), where matrix products, not launches,
# set the pace: GPT-2 small's body and one twice as wide
MFU_SHAPES = ["12x768x1024x16", "12x1536x1024x16"]
# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s (SXM parts)
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.2, "RTX 3090": 71.0}


def say(line: str) -> None:
    print(line, flush=True)


def install_from_checkout() -> dict:
    """The checkout on the path of this process and its children; wheels in .whl/ installed without network."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels:
        site = Path(tempfile.gettempdir()) / "repytilian-gpu-site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--no-index", "--no-deps",
                        "--target", str(site), *map(str, wheels)], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        sys.path.insert(0, str(site))
    sys.path.insert(0, str(ROOT))
    return env


def machine(dry_run: bool) -> dict:
    import torch

    info = {"date": date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "dry_run": dry_run}
    if dry_run:
        from repytilian.runtime.cpu import cpu_name

        return {**info, "device": "cpu", "name": cpu_name(), "bf16_peak_tflops": None}
    props = torch.cuda.get_device_properties(0)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in props.name), None)
    return {**info, "device": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "bf16_peak_tflops": peak,
            "bf16_matmul_tflops": round(matmul_tflops(), 1)}


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """What this GPU does on one large bf16 matrix product: the peak a step could approach."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


# What the GPU tests import besides torch: pytest, and the package's own core (a GPU machine's own
# Python runs them, with its CUDA build of torch, the checkout on its path, nothing installed)
TEST_NEEDS = ["pytest", "numpy", "safetensors", "tqdm"]


def missing_modules(env: dict, names: list[str]) -> list[str]:
    """Which of `names` the Python that runs the tests cannot import."""
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "print(*[n for n in sys.argv[1:] if importlib.util.find_spec(n) is None])", *names],
                           env=env, capture_output=True, text=True)
    return probe.stdout.split()


def gpu_tests(env: dict) -> dict:
    """The tests marked gpu, in a process of their own; their summary line, parsed."""
    missing = missing_modules(env, TEST_NEEDS)
    if missing:
        return {"exit_code": None, "missing": missing, "failed_tests": [],
                "not_run": f"this Python lacks {', '.join(missing)}: {sys.executable} -m pip install {' '.join(missing)} "
                           "(and httpx starlette uvicorn for the server's test, which skips without them)"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env, capture_output=True, text=True)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    result = {"exit_code": done.returncode, **counts, "failed_tests": failed, "tail": done.stdout[-3000:]}
    if not counts and done.returncode != 0:  # pytest itself failed (a test file that cannot be collected...)
        result["not_run"] = f"pytest ended with exit code {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}"
    return result


def train(env: dict, out: Path, args: list[str], dry_run: bool, timeout: float) -> dict:
    """training.py with `args` into `out`; its figures from the folder it saved: steps, tokens/s over the
    whole run (the compile included) and over its steady steps (from the first evaluation on, once
    the compile and the first kernels are behind it), model TFLOP/s and the whole-split val loss."""
    cmd = [sys.executable, str(ROOT / "training.py"), *args, "-m", str(out), "-t", "0", "--no-progress",
           "--seed", "1337", "--device", "cpu" if dry_run else "cuda"]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"args": args, "exit_code": "timeout", "tail": (e.stderr or b"")[-3000:].decode(errors="replace")}
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"args": args, "exit_code": done.returncode, "tail": done.stderr[-3000:]}
    config = json.loads((out / "config.json").read_text())
    summary, model = config["summary"], config["model"]
    from repytilian.cli.bench import model_flops_per_token

    flops_per_token = model_flops_per_token(summary["parameters"], model["n_layer"], model["block_size"],
                                            model["n_embd"])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [e for e in evals if "val_loss" in e and "time" in e]
    tokens_per_s = summary["tokens_seen"] / max(summary["train_seconds"], 0.01)
    steady = None
    if len(evals) >= 2 and evals[-1]["time"] > evals[0]["time"]:
        steady = (evals[-1]["tokens"] - evals[0]["tokens"]) / (evals[-1]["time"] - evals[0]["time"])
    header = next((line for line in done.stderr.splitlines() if line.startswith("model:")), "")
    return {"args": args, "exit_code": 0, "wall_s": round(wall, 1), "steps": summary["step"],
            "tokens": summary["tokens_seen"], "train_seconds": summary["train_seconds"],
            "tokens_per_s": round(tokens_per_s), "model_tflops": round(flops_per_token * tokens_per_s / 1e12, 2),
            "steady_tokens_per_s": round(steady) if steady else None,
            "steady_model_tflops": round(flops_per_token * steady / 1e12, 2) if steady else None,
            "val_loss_full": summary.get("val_loss_full"), "parameters": summary["parameters"],
            "evaluations": [{k: e[k] for k in ("step", "time", "val_loss")} for e in evals], "header": header}


def with_mfu(run: dict, peak: float | None) -> dict:
    for key in ("model_tflops", "steady_model_tflops"):
        if run.get(key) is not None and peak:
            run[key.replace("model_tflops", "mfu")] = round(run[key] / peak, 3)
    return run


def utilisation(run: dict, peak: float | None) -> str:
    key = "steady_" if run.get("steady_model_tflops") is not None else ""
    said = f"{run[key + 'model_tflops']} model TFLOP/s " + ("in its steady steps" if key else "over the whole run")
    if peak and run.get(key + "mfu") is not None:
        said += f" = {100 * run[key + 'mfu']:.1f}% of the {peak:g} TFLOP/s bf16 peak"
        said += f" ({100 * run['mfu']:.1f}% over the whole run, the compile included)" if key else ""
    return said


def shape_args(shape: str) -> list[str]:
    """`LxDxTxB` (layers, width, context, batch; heads = width / 64) as training.py's flags."""
    n_layer, n_embd, block, batch = (int(v) for v in shape.lower().split("x"))
    return ["-s", "hyper", "--n-layer", str(n_layer), "--n-head", str(max(1, n_embd // 64)), "--n-embd", str(n_embd),
            "--block-size", str(block), "--batch-size", str(batch), "--dropout", "0"]


def decoding(folder: Path, dry_run: bool, tokens: int) -> dict:
    import repytilian

    lm = repytilian.load_model(folder, device="cpu" if dry_run else "cuda")
    lm.generate("ROMEO:", max_new_tokens=8, temperature=0)  # warm-up (kernels, caches)
    start = time.perf_counter()
    lm.generate("ROMEO:", max_new_tokens=tokens, temperature=0)
    one = tokens / (time.perf_counter() - start)
    prompts = ["ROMEO:", "JULIET:", "KING:", "First Citizen:"] * 4
    start = time.perf_counter()
    lm.generate(prompts, max_new_tokens=tokens, temperature=0)
    many = len(prompts) * tokens / (time.perf_counter() - start)
    return {"tokens": tokens, "batch_1_tokens_per_s": round(one), "batch_16_tokens_per_s": round(many)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="gpu-check.json", help="where every figure goes (default gpu-check.json)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of -s hyper training, its compile "
                                                                   "counted (default 170; 3 in a dry run)")
    parser.add_argument("--iters", type=int, default=None, help="-s hyper's steps, if the budget allows "
                                                                "(default 2000; none in a dry run)")
    parser.add_argument("--mfu-shape", action="append", default=None, metavar="LxDxTxB",
                        help="a larger shape to measure (layers x width x context x batch; repeatable; default "
                             + " and ".join(MFU_SHAPES) + ")")
    parser.add_argument("--mfu-iters", type=int, default=None, help="steps of each larger shape (default 90)")
    parser.add_argument("--data", help="a folder with tinyshakespeare.txt (default $REPYTILIAN_DATA)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: every step, tiny and short")
    parser.add_argument("--no-tests", action="store_true", help="leave out the tests marked gpu")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens per decoding measurement "
                                                                        "(default 500; 20 in a dry run)")
    args = parser.parse_args(argv)
    env = install_from_checkout()
    data = args.data or os.environ.get("REPYTILIAN_DATA") or next(
        (str(d) for d in (ROOT / ".gpu-data", ROOT.parent / "shared" / "data") if (d / "tinyshakespeare.txt").is_file()),
        None)  # the folders the docstring and the Makefile name, where nothing says otherwise
    if data:
        env["REPYTILIAN_DATA"] = os.environ["REPYTILIAN_DATA"] = str(Path(data).resolve())
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        say("gpu-check: torch sees no CUDA GPU here; `--dry-run` goes through the steps on the CPU")
        return 2
    report: dict = {"machine": machine(args.dry_run)}
    m, peak = report["machine"], report["machine"].get("bf16_peak_tflops")

    def save() -> None:  # after each part: a run cut short still leaves what it measured
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")

    say(f"gpu-check {m['date']}: {m['name']}, torch {m['torch']}" + (" (CPU dry run: no GPU figures)"
                                                                       if args.dry_run else ""))
    save()
    if not args.no_tests:
        report["tests"] = t = gpu_tests(env)
        say(f"tests marked gpu: not run: {t['not_run']}" if "not_run" in t else
            f"tests marked gpu: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
            f"{t.get('skipped', 0)} skipped" + (f": {', '.join(t['failed_tests'])}" if t["failed_tests"] else ""))
        save()
    budget = args.budget or (3 if args.dry_run else 170)
    iters = args.iters or (None if args.dry_run else 2000)
    recipe = ["-s", "tiny" if args.dry_run else "hyper", "--budget", f"{budget:g}"]
    recipe += ["--iters", str(iters)] if iters else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hyper"
        report["training"] = run = with_mfu(train(env, out, recipe, args.dry_run, budget + 300), peak)
        if run["exit_code"] == 0:
            say(f"training {' '.join(recipe)}: {run['steps']:,} steps in {run['train_seconds']:.0f} s, "
                f"{run['tokens_per_s']:,} tokens/s"
                + (f" ({run['steady_tokens_per_s']:,} in its steady steps), " if run["steady_tokens_per_s"] else ", ")
                + f"{utilisation(run, peak)}; whole-split val loss {run['val_loss_full']}")
            save()
            report["decoding"] = d = decoding(out, args.dry_run, args.decode_tokens or (20 if args.dry_run else 500))
            say(f"decoding {d['tokens']} tokens, greedy: batch 1 {d['batch_1_tokens_per_s']:,} tokens/s, "
                f"16 prompts at once {d['batch_16_tokens_per_s']:,} tokens/s")
        else:
            say(f"training failed (exit {run['exit_code']}):\n{run['tail']}")
        save()
        report["larger"] = larger = []
        mfu_iters = args.mfu_iters or (6 if args.dry_run else 90)
        for shape in args.mfu_shape or (["2x64x64x4"] if args.dry_run else MFU_SHAPES):
            flags = shape_args(shape) + ["--iters", str(mfu_iters), "--eval-interval", str(max(1, mfu_iters // 3)),
                                         "--set", "eval_iters=1"]
            big = with_mfu(train(env, Path(tmp) / shape, flags, args.dry_run, 420), peak)
            larger.append({"shape": shape, **big})
            save()
            say(f"shape {shape}: " + (f"{big['parameters'] / 1e6:.1f}M parameters, {big['steady_tokens_per_s'] or 0:,} "
                                      f"tokens/s, {utilisation(big, peak)}" if big["exit_code"] == 0
                                      else f"failed (exit {big['exit_code']}):\n{big['tail']}"))
    say(f"every figure in {args.json}")
    failed = (report.get("tests", {}).get("exit_code", 0) not in (0, 5) or run["exit_code"] != 0
              or any(b["exit_code"] != 0 for b in larger))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
