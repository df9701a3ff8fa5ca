"""Let `python3 training.py` (and `python3 -m repytilian`) work from a checkout whose dependencies live in `.venv`.

If torch cannot be imported and the project's `.venv` exists, run the script again with its
Python; otherwise say how to install, instead of an ImportError traceback.

Whether this Python already is the venv's is read from `sys.prefix`, never from the interpreter's
path: a venv's `bin/python` is a symlink to the very interpreter it was made from, so the two
resolve to the same file although only one of them sees the venv's packages.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _venv_python(venv: Path) -> Path | None:
    for candidate in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if candidate.is_file():
            return candidate
    return None


def _running_in(venv: Path) -> bool:
    try:
        return Path(sys.prefix).resolve() == venv.resolve()
    except OSError:
        return False


def ensure_dependencies(script: str, module: str | None = None) -> None:
    """`script` is the running file; with `module`, it is that package's __main__.py, run as
    `python -m module` from the checkout that holds the package (the `repytilian` command lives in
    .venv/bin, which a new user may not have activated)."""
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        root = Path(script).absolute().parent.parent if module else Path(script).resolve().parent
        venv = root / ".venv"
        python = _venv_python(venv)
        if python is not None and not _running_in(venv) and not os.environ.get("REPYTILIAN_REEXEC"):
            os.environ["REPYTILIAN_REEXEC"] = "1"  # once: a broken venv must not loop
            again = ["-m", module] if module else [script]
            os.execv(str(python), [str(python), *again, *sys.argv[1:]])
        where = f" in {venv}" if python is not None else ""
        print(f"error: {e.name} is not installed{where}. Run `make install` in {root} "
              "(or `pip install -e .`) and try again", file=sys.stderr)
        sys.exit(2)
