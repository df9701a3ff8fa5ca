"""`python3 -m unittest`, the original README's test command, runs the real suite.

The tests are pytest's (tests/), which unittest's discovery cannot see: alone it would run none
and report OK. This one unittest case runs pytest as `make test` does and fails when it fails.
REPYTILIAN_PYTEST_ARGS, if set, replaces pytest's arguments (e.g. one file, for a quick check).
"""
import importlib.util
import os
import shlex
import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent


class TheWholeSuite(unittest.TestCase):
    def test_pytest_passes(self):
        try:
            import pytest  # noqa: F401
        except ImportError:
            self.fail("the tests need pytest and the project installed: run `make test` (it sets up .venv "
                      "and runs them), or `pip install -e '.[dev]'` first")
        env = dict(os.environ)
        shared = ROOT.parent / "shared" / "data"
        if "REPYTILIAN_DATA" not in env and (shared / "tinyshakespeare.txt").is_file():
            env["REPYTILIAN_DATA"] = str(shared)  # as the Makefile does
        # As `make test`: one worker process a core where pytest-xdist is installed (the dev extra)
        workers = "-n auto --maxprocesses 4 --dist loadfile" if importlib.util.find_spec("xdist") else ""
        args = shlex.split(env.get("REPYTILIAN_PYTEST_ARGS", f"-q {workers}"))
        code = subprocess.call([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env)
        self.assertEqual(code, 0, f"pytest exited with {code} (its report is above); `make test` runs the same suite")


if __name__ == "__main__":
    unittest.main()
