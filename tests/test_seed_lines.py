"""The original README's own lines: `python3 -m unittest` and `pip3 install -r requirements.txt`."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unittest_with(pytest_args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPYTILIAN_PYTEST_ARGS": pytest_args}
    return subprocess.run([sys.executable, "-m", "unittest"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


def test_python_m_unittest_runs_pytest_and_fails_when_a_test_fails(tmp_path):
    # Small suites of their own: what is tested is the bridge (unittest runs pytest, passes its
    # verdict on), which needs no model; each pytest start costs seconds already.
    quick = "-q -p no:cacheprovider -p no:hypothesispytest"
    good = tmp_path / "test_passes.py"
    good.write_text("def test_yes():\n    assert 1 == 1\n")
    passing = unittest_with(f"{quick} {good}")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "Ran 1 test" in passing.stderr and re.search(r"\d+ passed", passing.stdout)
    bad = tmp_path / "test_fails.py"
    bad.write_text("def test_no():\n    assert 1 == 2\n")
    failing = unittest_with(f"{quick} {bad}")
    assert failing.returncode != 0 and "1 failed" in failing.stdout
    assert "make test" in failing.stderr and "FAILED" in failing.stderr


def test_requirements_txt_installs_the_project_with_the_cpu_build_of_the_makefiles_torch():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert torch_spec in lines  # the same torch as make install
    assert any(ln.startswith("-e .") for ln in lines)  # the project itself, so training.py works
    assert not any(ln.startswith("torch") and ln != torch_spec for ln in lines)
