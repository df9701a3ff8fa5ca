"""Let `python3 training.py` work from a checkout whose dependencies live in `.venv`.

If torch cannot be imported and the project's `.venv` exists, run the script again with its
Python; otherwise say how to install, instead of an ImportError traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def ensure_dependencies(script: str) -> None:
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        root = Path(script).resolve().parent
        venv_python = root / ".venv" / "bin" / "python"
        if venv_python.is_file() and Path(sys.executable).resolve() != venv_python.resolve() \
                and not os.environ.get("REPYTILIAN_REEXEC"):
            os.environ["REPYTILIAN_REEXEC"] = "1"
            os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])
        print(f"error: {e.name} is not installed. Run `make install` in {root} "
              "(or `pip install -e .`) and try again", file=sys.stderr)
        sys.exit(2)
