"""Progress for people: the library's `Progress` events (events.py) drawn as a tqdm bar on a
terminal, as a notebook's own bar in Jupyter (and Colab), as plain periodic lines anywhere else.
The library only counts; drawing is the command line's, and `on_screen()`'s for a program or a
notebook that asks for it.

A bar redraws itself with carriage returns; written to a log file or a pipe (`2> log`, `| tee`)
those frames pile up on one line. Off a terminal the same information (count, share, the bar's
postfix such as loss and tokens/s, elapsed time, ETA) comes as one line every `every` seconds
and once at the end. `delay` holds back anything for work that ends quickly (an evaluation of a
few seconds says nothing), as tqdm's own `delay` does.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from ..events import Listener, Progress, in_words


class LineProgress:
    """The part of tqdm's interface the project uses, written as plain lines."""

    def __init__(self, total: int | None, unit: str, desc: str, initial: int = 0, file: TextIO | None = None,
                 every: float = 30.0, delay: float = 0.0):
        self.total, self.unit, self.desc = total, unit, desc
        self.n = self.initial = initial
        self.file = file or sys.stderr
        self.every, self.delay = every, delay
        self.postfix = ""
        self.written: int | None = None  # the count the last line showed
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.started >= self.delay and now - self.last >= self.every:
            self._write(now)

    def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
        self.postfix = s

    def close(self) -> None:
        now = time.monotonic()
        if self.n > self.initial and self.n != self.written and now - self.started >= self.delay:
            self._write(now)
        self.written = self.n  # closing twice, or after a line that said it all, writes nothing more

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _write(self, now: float) -> None:
        self.last, self.written = now, self.n
        elapsed = now - self.started
        parts = [f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        done = self.n - self.initial
        if self.total and 0 < done and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval(elapsed / done * (self.total - self.n))}")
        print(f"{self.desc}: {', '.join(parts)}", file=self.file, flush=True)


def progress(total: int | None, unit: str, desc: str, enabled: bool = True, initial: int = 0,
             every: float = 30.0, delay: float = 0.0, **bar: Any) -> Any:
    """A tqdm bar on a terminal (stderr), LineProgress elsewhere, or a bar that shows nothing."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if in_notebook():
        bar = _notebook_bar(total=total, initial=initial, unit=unit, desc=desc, delay=delay, **bar)
        if bar is not None:
            return bar
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, delay=delay, **bar)
    return LineProgress(total, unit, desc, initial, sys.stderr, every, delay)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a notebook, Colab), where stderr is no terminal but a
    bar of carriage-return frames would pile up in the cell's output."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


def _notebook_bar(**options: Any) -> Any:
    """tqdm's notebook bar (a widget), or None where ipywidgets is missing (then plain lines)."""
    options.pop("dynamic_ncols", None)
    try:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(**options)
    except ImportError:
        return None


def on_screen(log=print) -> Listener:
    """Events as the command line shows them, for a program or a notebook: each event's words
    through `log`, progress as bars (`train(options, on_event=repytilian.on_screen())`)."""
    bars, words = Bars(), in_words(log)

    def listener(event: Any) -> None:
        (bars if isinstance(event, Progress) else words)(event)

    return listener


# Per task: seconds between lines off a terminal, seconds before anything shows (quick work says
# nothing), whether the bar stays when done, and tqdm's own options.
_TRAINING = {"every": 30.0, "delay": 0.0, "leave": True, "dynamic_ncols": True, "smoothing": 0.05}
_OTHER = {"every": 15.0, "delay": 2.0, "leave": False}


class Bars:
    """A listener for Progress events: one bar per task while it runs."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, event: Progress) -> None:
        bar = self.bars.get(event.task)
        if bar is None:
            options = dict(_TRAINING if event.task == "training" else _OTHER)
            if event.unit == "char":
                options["unit_scale"] = True
            if event.finished and event.elapsed < options["delay"]:
                return
            bar = self.bars[event.task] = progress(event.total, event.unit, event.task, initial=event.initial,
                                                   **options)
        bar.set_postfix_str(event.details, refresh=False)
        bar.update(event.done - bar.n)
        if event.finished:
            bar.close()
            del self.bars[event.task]
