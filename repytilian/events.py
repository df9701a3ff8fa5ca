"""What a training run tells whoever listens, as data: the library reports, its callers speak.

`api.train` and the `Trainer` hand each event to a listener (`on_event`). The command line turns
them into words on stderr, adding what only it knows (the command that resumes a stopped run); a
server would send them as JSON (`dataclasses.asdict`), a second rank would drop them. `words()` is
an event's plain sentence, with no command-line flags in it.

Library code outside a training run (reading data, a signal received, a prompt cut to the
context) says what it has to say through `note()`, and how far long work has come through a
`ProgressTracker` (`Progress` events): to the listener of the innermost `notes_to` block of this
thread or task. Without one, notes go to Python's `logging` (logger "repytilian"; warnings reach
stderr through logging's last-resort handler, notes only where logging is set up) and progress
goes nowhere. The library itself never prints: drawing a bar is the command line's job.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union


@dataclass(frozen=True)
class Note:
    """A line of information; `kind` "warning" for something the user may want to act on."""

    text: str
    kind: str = "note"
    settings: tuple[str, ...] = ()  # the settings the text names, as the library does (see errors.py)

    def words(self) -> str:
        return self.text


@dataclass(frozen=True)
class Prepared:
    """Data and model are ready: what will be trained on what."""

    source: str
    chars: int
    tokenizer: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    parameters: int
    batch_size: int
    learning_rate: float
    device: str
    dtype: str
    compiled: bool

    def words(self) -> str:
        return (f"training on {self.source}: {self.chars:,} characters, {self.tokenizer} tokenizer "
                f"({self.vocab_size:,} tokens), {self.train_tokens:,} train / {self.val_tokens:,} val tokens\n"
                f"model: {self.n_layer} layer{'s' * (self.n_layer != 1)}, {self.n_head} head{'s' * (self.n_head != 1)}, "
                f"{self.n_embd} wide, context {self.block_size}, {parameter_count(self.parameters)} parameters; "
                f"batch {self.batch_size}, "
                f"lr {self.learning_rate:g}, device {self.device}, {self.dtype}{', compiled' if self.compiled else ''}")


def parameter_count(n: int) -> str:
    """0.80M for a model; the count itself below 10,000, which would read 0.00M."""
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


@dataclass(frozen=True)
class Started:
    """The loop starts; signals to `pid` now stop it at a step boundary and save."""

    pid: int
    until: str  # "to step 2,000", "for 90 s", "until stopped"
    processes: int = 1  # under torchrun: how many train together (pid is rank 0's)

    def words(self) -> str:
        if self.processes > 1:
            return (f"training {self.until} on {self.processes} processes. Stop and save with Ctrl+C (or kill "
                    f"-TERM) to torchrun, or `kill -USR1 {self.pid}` (rank 0; any rank's PID does the same)")
        return f"training {self.until}. PID {self.pid}: stop and save with Ctrl+C or `kill -USR1 {self.pid}`"


@dataclass(frozen=True)
class Evaluated:
    step: int
    tokens: int
    train_loss: float
    val_loss: float
    lr: float
    time: float

    def words(self) -> str:
        return f"step {self.step}: train loss {self.train_loss:.4f}, val loss {self.val_loss:.4f}"


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path

    def words(self) -> str:
        return f"checkpoint at step {self.step}: saved the full training state to {self.path}"


@dataclass(frozen=True)
class Stopped:
    """Stopped early (a signal, or a caller's request); everything is saved at `path` to resume from."""

    reason: str
    step: int
    path: Path
    out: Path | None  # where the run was to save when finished
    processes: int = 1  # under torchrun: how many trained together

    def words(self) -> str:
        return f"stopped by {self.reason} at step {self.step}; saved everything to {self.path}"


@dataclass(frozen=True)
class Finished:
    steps: int
    seconds: float
    val_loss: float
    scope: str  # what the val loss covered, in words
    bits_per_byte: float | None = None  # the same loss on every tokenizer's scale, where the tokens are text
    train_seconds: float | None = None  # the steps' own time, which a time budget counts

    def words(self) -> str:
        bpb = "" if self.bits_per_byte is None else f" ({self.bits_per_byte:.4f} bits per byte)"
        # `seconds` is the whole run's (start-up, evaluations, the final score): "in 105s" after
        # "training for 100 s" read as a budget overrun
        training = "" if self.train_seconds is None else f", {self.train_seconds:.0f}s of them training"
        return (f"finished {self.steps:,} steps in {self.seconds:.0f}s{training}; "
                f"val loss over {self.scope}: {self.val_loss:.4f}{bpb}")


@dataclass(frozen=True)
class Saved:
    path: Path

    def words(self) -> str:
        return f"saved the model to {self.path}"


@dataclass(frozen=True)
class NothingSaved:
    """A finished run that was asked to keep nothing."""

    def words(self) -> str:
        return "nothing saved (no output folder was given)"


@dataclass(frozen=True)
class Progress:
    """How far a long piece of work has come: `done` of `total` `unit`s (total None: open-ended),
    counted from `initial` in this process (a resumed run starts past 0); `details` such as the
    loss and tokens/s; `finished` on the last event of the work."""

    task: str
    unit: str
    done: int
    total: int | None
    initial: int = 0
    details: str = ""
    finished: bool = False
    elapsed: float = 0.0  # seconds since the work began

    def words(self) -> str:
        share = f"/{self.total:,}" if self.total else ""
        return f"{self.task}: {self.done:,}{share} {self.unit}s" + (f", {self.details}" if self.details else "")


Event = Union[Note, Progress, Prepared, Started, Evaluated, CheckpointSaved, Stopped, Finished, Saved, NothingSaved]
Listener = Callable[[Any], None]


def in_words(log: Callable[[str], None]) -> Listener:
    """A listener that hands each event's words to `log` (e.g. `print`); progress events are for
    bars, not lines, so it leaves them out."""

    def listener(event: Any) -> None:
        if not isinstance(event, Progress):
            log(event.words())

    return listener


_note_listener: ContextVar[Listener | None] = ContextVar("repytilian_note_listener", default=None)


_log = logging.getLogger("repytilian")


def to_logging(event: Any) -> None:
    """The listener of a library call given none: events in words to Python's logging (warnings
    as warnings, the rest as information), progress left out."""
    if isinstance(event, Progress):
        return
    if getattr(event, "kind", None) == "warning":
        _log.warning(event.words())
    else:
        _log.info(event.words())


def note(text: str, kind: str = "note", settings: tuple[str, ...] = ()) -> None:
    """Tell whoever listens for notes (see `notes_to`); without a listener, Python's logging."""
    (_note_listener.get() or to_logging)(Note(text, kind, settings))


def listening() -> Listener | None:
    """The listener of the innermost `notes_to` block, if any."""
    return _note_listener.get()


PROGRESS_SECONDS = 0.5  # the least time between two Progress events of one piece of work


class ProgressTracker:
    """Counts a long piece of work and reports `Progress` to a listener (by default the one of the
    innermost `notes_to` block) at most every PROGRESS_SECONDS, and once at the end."""

    def __init__(self, task: str, unit: str, total: int | None, initial: int = 0, enabled: bool = True,
                 report: Listener | None = None):
        self.task, self.unit, self.total, self.initial = task, unit, total, initial
        self.report = (report or listening()) if enabled else None
        self.done = initial
        self.details = ""
        self.started = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1, force: bool = False) -> None:
        """`n` more done; `force`: report now (for callers that pace their own updates)."""
        self.done += n
        now = time.monotonic()
        if self.report is not None and (force or now - self.last >= PROGRESS_SECONDS):
            self.last = now
            self._send(False, now)

    def due(self) -> bool:
        """Whether the next update will be reported (callers compute costly details only then)."""
        return self.report is not None and time.monotonic() - self.last >= PROGRESS_SECONDS

    def close(self) -> None:
        if not self.closed and self.report is not None:
            self._send(True, time.monotonic())
        self.closed = True

    def _send(self, finished: bool, now: float) -> None:
        self.report(Progress(self.task, self.unit, self.done, self.total, self.initial, self.details, finished,
                             now - self.started))

    def __enter__(self) -> "ProgressTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextmanager
def notes_to(listener: Listener | None) -> Iterator[None]:
    """Within the block, `note()` hands its Note events to `listener` (None: to stderr)."""
    token = _note_listener.set(listener)
    try:
        yield
    finally:
        _note_listener.reset(token)
