"""The benchmark runs and reports (its figures are for people; no timing is asserted here)."""
import json
import math

import pytest
from conftest import benchmark_module, run_script

pytestmark = pytest.mark.machine  # the dtype and timings depend on the CPU: CI runs these as on AVX2 too


def test_bench_prints_a_table_and_writes_json(tmp_path):
    """Its bf16 rows are there only on a CPU with native bf16 (`make test-avx2` runs it as on one without)."""
    from repytilian.runtime.precision import cpu_bf16

    r = run_script("bench", "--presets", "tiny", "--steps", "2", "--repeats", "1",
                   "--loop-steps", "3", "--json", "b.json", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "matmul 2048^2: float32" in r.stdout and "tiny" in r.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    row = report["throughput"][0]
    assert row["preset"] == "tiny" and row["tokens_per_s"] > 0 and row["pct_of_peak"] > 0  # any share of any peak
    assert row["note"] == "float32 (nanoGPT's way)" and row["speedup_vs_nanogpt_way"] == 1.0  # the baseline
    assert report["throughput"][1]["dtype"] == "float32" and report["throughput"][1]["peak_rss_mb"] > 0
    assert report["matmul_gflops"]["float32"] > 0
    dtypes = {row["dtype"] for row in report["throughput"]}
    if cpu_bf16().native:
        assert "bfloat16" in dtypes and report["matmul_gflops"]["bfloat16"] > 0
    else:
        assert "no native bf16 on this CPU" in r.stdout and "bf16 rows left out" in r.stdout
        assert dtypes == {"float32"} and list(report["matmul_gflops"]) == ["float32"]
    assert "training loop overhead at tiny" in r.stdout
    loop = report["loop_overhead"]
    # batch_pct is rounded: on a busy machine a step can be so slow that the batch share shows 0.00
    assert loop["step_ms"] > 0 and loop["batch_ms"] > 0 and 0 <= loop["batch_pct"] < 100 and loop["loop_pct"] < 100
    assert loop["dtype"] in ("float32", "bfloat16")


def test_missing_data_or_a_wrong_preset_is_a_clear_error_before_any_timing(tmp_path, monkeypatch):
    # Was: minutes of throughput timing, then a traceback ending in the last line of the message.
    monkeypatch.delenv("REPYTILIAN_DATA", raising=False)  # and REPYTILIAN_OFFLINE is set: no Tiny Shakespeare
    r = run_script("bench", "--presets", "tiny", "--budget", "5", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the shakespeare data set is not on this machine" in r.stderr and "REPYTILIAN_DATA" in r.stderr
    assert "matmul" not in r.stdout  # nothing was timed
    r = run_script("bench", "--presets", "tiny,huge", cwd=tmp_path)
    # bench's own flag is named (it said "-s preset", a flag bench does not have), and `auto`, which
    # bench cannot time (it is fitted to a text), is not offered
    assert r.returncode == 2 and "--presets: unknown preset 'huge'" in r.stderr and "Traceback" not in r.stderr
    assert "auto" not in r.stderr
    r = run_script("bench", "--presets", "none", "--budget", "1", "--quality-preset", "auto", cwd=tmp_path)
    assert r.returncode == 2 and "--quality-preset: unknown preset 'auto'; choose one of: tiny" in r.stderr


def test_a_measurement_that_fails_with_a_clear_error_passes_it_on_whole():
    from repytilian.cli.bench import _in_fresh_process
    from repytilian.errors import RepytilianError

    with pytest.raises(RepytilianError, match="unknown -s preset 'huge'; choose one of") as info:
        _in_fresh_process(["quality", "huge", "1", "auto"])
    assert "Traceback" not in str(info.value)


def test_quality_alone_on_tiny_shakespeare_names_the_machine(tmp_path):
    from repytilian.runtime.cpu import cpu_name

    r = run_script("bench", "--presets", "none", "--quality-preset", "tiny", "--budget", "1", "--json", "q.json",
                   cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tokens/s" not in r.stdout and "loop overhead" not in r.stdout  # no throughput timed
    assert cpu_name() in r.stdout.splitlines()[0]
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["throughput"] == [] and cpu_name() in report["machine"]
    (q,) = report["quality"]
    assert q["preset"] == "tiny" and q["budget_s"] == 1 and q["steps"] > 0 and 1.0 < q["val_loss_full"] < 5.0
    # Tiny Shakespeare is ASCII: bits per byte are the loss in bits per character
    assert abs(q["val_bits_per_byte"] - q["val_loss_full"] / math.log(2)) < 1e-3
    assert f"{q['val_bits_per_byte']} bits per byte" in r.stdout


def test_the_nanogpt_comparison_asks_for_a_checkout_before_any_timing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_vs_nanogpt.py"
    for args in ([], ["--nanogpt", str(tmp_path)]):  # none given; a folder without nanoGPT's model.py
        r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "--nanogpt must name a checkout of karpathy/nanoGPT" in r.stderr and not r.stdout


def test_gpu_check_says_what_its_tests_need_that_this_python_lacks(monkeypatch):
    """`make gpu-check` runs the GPU tests with the machine's own Python: without pytest there it
    reported "0 passed, 0 failed, 0 skipped" (pytest's complaint went to a stderr nobody saw)."""
    import os

    gpu_check = benchmark_module("gpu_check")
    env = dict(os.environ)
    assert gpu_check.missing_modules(env, ["pytest", "no_such_module_here"]) == ["no_such_module_here"]
    monkeypatch.setattr(gpu_check, "TEST_NEEDS", ["pytest", "no_such_module_here"])
    result = gpu_check.gpu_tests(env)
    assert result["exit_code"] is None and result["missing"] == ["no_such_module_here"]
    assert "this Python lacks no_such_module_here" in result["not_run"]
    assert "-m pip install no_such_module_here" in result["not_run"]
