"""The evaluations of a run still training, beside the folder it will save to.

A run appends each evaluation to `.<name>.live.jsonl` next to its `-m` folder (like the lock),
never inside it: the folder may hold the previous model, whose metrics.jsonl must stay its own
until the new model replaces it. A finished or stopped run removes the file; `repytilian serve`
shows a folder's loss curve from it while it exists, so the plot grows as the run trains.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .card import read_metrics


def live_path(target: Path) -> Path:
    return target.parent / f".{target.name}.live.jsonl"


class LiveMetrics:
    """Appends a run's evaluations for watchers; every line is written whole and flushed."""

    def __init__(self, target: Path, earlier: list[dict[str, Any]] | None = None):
        self.path = live_path(target)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(e) + "\n" for e in earlier or [])  # a resumed run's history first
        self.path.write_text(lines, encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def current_metrics(folder: Path, readable: Callable[[Path], Path | None] = lambda p: p
                    ) -> tuple[list[dict[str, Any]], bool]:
    """A folder's evaluations: a run's live ones while it trains there (True), else the saved ones.
    `readable` may refuse a file (None), which is then treated as absent (a server's models folder)."""
    live = live_path(folder)
    if live.is_file() and readable(live) is not None:
        rows = []
        for line in live.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
        return rows, True
    return (read_metrics(folder) if readable(folder / "metrics.jsonl") is not None else []), False
