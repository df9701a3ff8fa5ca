"""`make gpu-check`: every GPU path run, and measured, on a CUDA machine, in one command of at most 8 minutes.

1. the tests marked `gpu` (tests/test_gpu.py): training in bf16, float16 with the gradient scaler
   and float32; exact resume on CUDA; compile on and off; cached decoding equal to the full
   forward pass; torchrun on the GPU and NCCL; the server generating on CUDA; memory given back;
2. `-s hyper` trained on Tiny Shakespeare for a fixed time (`--budget`, default 150 s): steps,
   tokens/s, model FLOP utilisation against the GPU's bf16 peak, and the whole-split validation
   loss (the goal: at most 1.47 in under 3 minutes; nanoGPT's recipe reaches 1.4697);
3. decoding from that model: batch 1, and a batch of 16 prompts at once, in tokens/s.

Every figure goes to the JSON file of `--json`, and a line each to stdout.

    python benchmarks/gpu_check.py [--json gpu-check.json] [--budget 150]
    python benchmarks/gpu_check.py --dry-run          # on a CPU: the same steps, tiny and short

The dry run (CI runs it) goes through every step on the CPU with the `tiny` preset for a few
seconds: the GPU tests skip, and its figures are labelled as not GPU figures. A GPU machine
without network needs Tiny Shakespeare beside the checkout: copy it into a folder that git ignores
(`mkdir -p .gpu-data && cp ../shared/data/tinyshakespeare.txt .gpu-data/`), send that folder with
the checkout and point `REPYTILIAN_DATA` (or `--data`) at it. Packages the machine lacks (the
server's starlette and uvicorn) can travel as wheels in `.whl/`: they are installed from there,
without network; without them the server test skips and says so.
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
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, wheels)], check=True)
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


def gpu_tests(env: dict) -> dict:
    """The tests marked gpu, in a process of their own; their summary line, parsed."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env, capture_output=True, text=True)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    return {"exit_code": done.returncode, **counts, "failed_tests": failed, "tail": done.stdout[-3000:]}


def train_hyper(env: dict, budget: float, dry_run: bool, out: Path) -> dict:
    preset = "tiny" if dry_run else "hyper"
    cmd = [sys.executable, str(ROOT / "training.py"), "-s", preset, "--budget", str(budget), "-m", str(out),
           "-t", "0", "--no-progress", "--seed", "1337"] + (["--device", "cpu"] if dry_run else ["--device", "cuda"])
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"preset": preset, "exit_code": done.returncode, "tail": done.stderr[-3000:]}
    config = json.loads((out / "config.json").read_text())
    summary, model = config["summary"], config["model"]
    tokens_per_s = summary["tokens_seen"] / summary["train_seconds"]
    from repytilian.cli.bench import model_flops_per_token

    flops_per_token = model_flops_per_token(summary["parameters"], model["n_layer"], model["block_size"],
                                            model["n_embd"])
    header = next((line for line in done.stderr.splitlines() if line.startswith("model:")), "")
    return {"preset": preset, "exit_code": 0, "budget_s": budget, "wall_s": round(wall, 1),
            "steps": summary["step"], "tokens": summary["tokens_seen"], "train_seconds": summary["train_seconds"],
            "tokens_per_s": round(tokens_per_s), "model_tflops": round(flops_per_token * tokens_per_s / 1e12, 2),
            "val_loss_full": summary.get("val_loss_full"), "parameters": summary["parameters"], "header": header}


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
    parser.add_argument("--budget", type=float, default=None, help="seconds of -s hyper training (default 150; "
                                                                   "3 in a dry run)")
    parser.add_argument("--data", help="a folder with tinyshakespeare.txt (default $REPYTILIAN_DATA)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: every step, tiny and short")
    parser.add_argument("--no-tests", action="store_true", help="leave out the tests marked gpu")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens per decoding measurement "
                                                                        "(default 500; 20 in a dry run)")
    args = parser.parse_args(argv)
    env = install_from_checkout()
    if args.data:
        env["REPYTILIAN_DATA"] = os.environ["REPYTILIAN_DATA"] = str(Path(args.data).resolve())
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        say("gpu-check: torch sees no CUDA GPU here; `--dry-run` goes through the steps on the CPU")
        return 2
    report: dict = {"machine": machine(args.dry_run)}
    m = report["machine"]
    say(f"gpu-check {m['date']}: {m['name']}, torch {m['torch']}" + (" (CPU dry run: no GPU figures)"
                                                                       if args.dry_run else ""))
    if not args.no_tests:
        report["tests"] = gpu_tests(env)
        t = report["tests"]
        say(f"tests marked gpu: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
            f"{t.get('skipped', 0)} skipped" + (f": {', '.join(t['failed_tests'])}" if t["failed_tests"] else ""))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hyper"
        report["training"] = train = train_hyper(env, args.budget or (3 if args.dry_run else 150), args.dry_run, out)
        if train["exit_code"] == 0:
            peak = m.get("bf16_peak_tflops")
            train["mfu"] = round(train["model_tflops"] / peak, 3) if peak else None
            say(f"training -s {train['preset']} for {train['budget_s']:g} s: {train['steps']:,} steps, "
                f"{train['tokens_per_s']:,} tokens/s, {train['model_tflops']} model TFLOP/s"
                + (f" = {100 * train['mfu']:.1f}% of the {peak:g} TFLOP/s bf16 peak" if train["mfu"] else "")
                + f"; whole-split val loss {train['val_loss_full']}")
            report["decoding"] = d = decoding(out, args.dry_run, args.decode_tokens or (20 if args.dry_run else 500))
            say(f"decoding {d['tokens']} tokens, greedy: batch 1 {d['batch_1_tokens_per_s']:,} tokens/s, "
                f"16 prompts at once {d['batch_16_tokens_per_s']:,} tokens/s")
        else:
            say(f"training failed (exit {train['exit_code']}):\n{train['tail']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    say(f"every figure in {args.json}")
    failed = report.get("tests", {}).get("exit_code", 0) not in (0, 5) or train["exit_code"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
