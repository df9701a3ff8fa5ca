"""Where Repytilian keeps things on this machine, and the environment variables that move them.

- REPYTILIAN_HOME: the cache (default ~/.cache/repytilian): datasets/ (downloaded data sets),
  tokens/ (large corpora tokenized once), dtype-choices.json (number formats measured here);
- REPYTILIAN_DATA: a folder holding data set files (a mirror for machines without network);
- REPYTILIAN_OFFLINE: never download (data sets, tiktoken's encodings);
- REPYTILIAN_NO_PROGRESS: no progress bars or lines (logs only);
- REPYTILIAN_STREAM_MB: text from this size on is streamed, never read whole (default 64);
- REPYTILIAN_DIST_TIMEOUT: under torchrun, seconds a process waits for the others (default 300;
  distributed/world.py reads it).
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def cache_dir() -> Path:
    home = os.environ.get("REPYTILIAN_HOME")
    return Path(home) if home else Path.home() / ".cache" / "repytilian"


def progress_wanted() -> bool:
    return not os.environ.get("REPYTILIAN_NO_PROGRESS")


def repytilian_command() -> str:
    """How to run the `repytilian` command from here, for advice that must work when pasted: its name
    where that is on PATH and is this installation's; otherwise this environment's own script (after
    `make install` it is .venv/bin/repytilian, which is not on PATH until the venv is activated)."""
    bin_dir = Path(sys.executable).parent
    mine = next((p for p in (bin_dir / "repytilian", bin_dir / "repytilian.exe") if p.is_file()), None)
    found = shutil.which("repytilian")
    if mine is None:
        return "repytilian" if found else f"{shlex.quote(sys.executable)} -m repytilian"
    if found and Path(found).resolve() == mine.resolve():
        return "repytilian"
    try:
        shown = mine.relative_to(Path.cwd())
    except ValueError:
        shown = mine
    return shlex.quote(str(shown))
