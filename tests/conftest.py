"""Shared fixtures: a small generated corpus, tiny model settings, and an offline, isolated environment."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
if "REPYTILIAN_DATA" not in os.environ and (SHARED_DATA / "tinyshakespeare.txt").is_file():
    os.environ["REPYTILIAN_DATA"] = str(SHARED_DATA)
os.environ["REPYTILIAN_OFFLINE"] = "1"  # tests never touch the network
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one worker process a core (pytest-xdist): each computes on one
    # thread, as a user's OMP_NUM_THREADS would say (set before torch is imported, and inherited by
    # the commands the tests start). Two workers of two threads each on 2 cores made OpenMP's
    # threads wait on each other: 10 minutes, against 8 for one worker and 5 for two of one thread.
    if not os.environ.get("OMP_NUM_THREADS", "").isdigit():
        os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # imported already (by a plugin): it read the environment before
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ["REPYTILIAN_NO_PROGRESS"] = "1"
# The library logs the notes nobody listens for (events.note): the tests read them through caplog
logging.getLogger("repytilian").setLevel(logging.INFO)


def _interrupted_in_checkout() -> set[str]:
    """The stopped runs saved in the checkout's own models/interrupted/ (where a test that forgets its
    `interrupt_root` leaves one)."""
    folder = ROOT / "models" / "interrupted"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _interrupted_in_checkout()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails if a test saved a model into the checkout (each must write under its tmp_path)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or _BEFORE not in session.config.stash:
        return
    left = sorted(_interrupted_in_checkout() - session.config.stash[_BEFORE])
    if left:
        print(f"\na test saved stopped runs into {ROOT / 'models' / 'interrupted'}: {', '.join(left)} "
              "(give it interrupt_root under its tmp_path)", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()

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


def run_script(*args: str, cwd: Path, timeout: float = 120, process: bool = False,
               **kwargs) -> subprocess.CompletedProcess:
    """Run training.py / generate.py / `python -m repytilian` as a user would, from `cwd`.

    By default the command runs in this process, through the very functions the scripts call
    (cli.training_script, cli.generate_script, cli.main), with stdout and stderr captured: a new
    Python costs seconds to import torch and its optimisers' compiler, which the suite then pays
    once, not a hundred times. `process=True` runs a real process, for what only a process shows
    (the scripts' own start-up, signals, exit codes from the interpreter, environment variables
    read at import)."""
    if process or kwargs:
        return _in_a_process(args, cwd, timeout, **kwargs)
    return _in_this_process(args, cwd)


def benchmark_module(name: str):
    """benchmarks/NAME.py imported as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkout_path() -> str:
    """PYTHONPATH for a child process: the checkout first, then whatever the caller's path holds
    (gpu_check's carried wheels: starlette, uvicorn)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _in_a_process(args, cwd, timeout, **kwargs) -> subprocess.CompletedProcess:
    first = args[0]
    cmd = [sys.executable, str(ROOT / first)] if first.endswith(".py") else [sys.executable, "-m", "repytilian"]
    rest = args[1:] if first.endswith(".py") else args
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*cmd, *rest], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def _in_this_process(args, cwd) -> subprocess.CompletedProcess:
    from repytilian import cli

    scripts = {"training.py": cli.training_script, "generate.py": cli.generate_script}
    entry = scripts.get(args[0], cli.main)
    argv = list(args[1:]) if args[0] in scripts else list(args)
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry(argv)
            except SystemExit as e:  # argparse's refusals and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what a real process would show: a traceback and exit status 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([*args], code, out.getvalue(), err.getvalue())


TINY_TEXT = "the cat sat on the mat. a dog ran to the cat!\n"


def tiny_language_model(n_layer: int = 1):
    """A character model of TINY_TEXT's letters with random weights (seed 0), context 16: for the
    generation engine's tests, where what is generated matters less than how."""
    import torch

    from repytilian.language_model import LanguageModel
    from repytilian.model import GPT, ModelConfig
    from repytilian.tokenizers import tokenizer_class

    tokenizer = tokenizer_class("characters").train(TINY_TEXT)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=n_layer, n_head=2, n_embd=16))
    return LanguageModel(model.eval(), tokenizer)
