"""Shared fixtures: a small generated corpus, tiny model settings, and an offline, isolated environment."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
if "REPYTILIAN_DATA" not in os.environ and (SHARED_DATA / "tinyshakespeare.txt").is_file():
    os.environ["REPYTILIAN_DATA"] = str(SHARED_DATA)
os.environ["REPYTILIAN_OFFLINE"] = "1"  # tests never touch the network
os.environ["REPYTILIAN_NO_PROGRESS"] = "1"

# A model small enough to train in about a second on 2 cores.
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--set", "eval_iters=2", "--set", "warmup_iters=5"]
TINY_OVERRIDES = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8,
                  "eval_iters": 2, "warmup_iters": 5, "eval_interval": 10}

WORDS = ("the king and queen walk to the castle . my lady speaks of love , "
         "and the fool laughs at the moon ! what light through yonder window breaks ? ").split()


def make_corpus(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))))
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("repytilian_home")
    monkeypatch.setenv("REPYTILIAN_HOME", str(home))
    return home


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def run_script(*args: str, cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run training.py / generate.py / `python -m repytilian` as a user would, from `cwd`."""
    first = args[0]
    cmd = [sys.executable, str(ROOT / first)] if first.endswith(".py") else [sys.executable, "-m", "repytilian"]
    rest = args[1:] if first.endswith(".py") else args
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*cmd, *rest], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
