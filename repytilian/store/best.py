"""Which of a run's models people sample: its best (best/), where that beats its last model over
the whole validation split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def better_best(path: Path) -> dict[str, Any] | None:
    """What `path/best/` holds, where it is a better model than `path` itself over the whole
    validation split: the best evaluation of the run, kept beside the last model (--keep both).
    None where there is no best/ or the last model is at least as good. The model people sample is
    this one; `-l` still continues the last, which alone has the optimiser's state."""
    if not (path / "best" / "config.json").is_file():
        return None
    try:
        summary = json.loads((path / "config.json").read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return best_in(summary)


def best_in(summary: Any) -> dict[str, Any] | None:
    """better_best's rule, read from a config's summary: best/ was kept and beats the last model
    over the whole validation split."""
    best = summary.get("best") if isinstance(summary, dict) else None
    try:
        if best.get("kept") != "best/" or not best["val_loss_full"] < best["last_val_loss_full"]:
            return None
    except (AttributeError, KeyError, TypeError):
        return None
    return {"step": best["step"], "val_loss_full": best["val_loss_full"],
            "last_step": summary.get("step"), "last_val_loss_full": best["last_val_loss_full"]}
