"""What a training run tells whoever listens, as data: the library reports, its callers speak.

`api.train` and the `Trainer` hand each event to a listener (`on_event`). The command line turns
them into words on stderr, adding what only it knows (the command that resumes a stopped run); a
server would send them as JSON (`dataclasses.asdict`), a second rank would drop them. `words()` is
an event's plain sentence, with no command-line flags in it.

Library code outside a training run (reading data, a signal received, a prompt cut to the
context) says what it has to say through `note()`: to the listener of the innermost `notes_to`
block of this thread or task, else as a line on stderr.
"""
from __future__ import annotations

import sys
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
                f"model: {self.n_layer} layers, {self.n_head} heads, {self.n_embd} wide, context "
                f"{self.block_size}, {parameter_count(self.parameters)} parameters; batch {self.batch_size}, "
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

    def words(self) -> str:
        return (f"finished {self.steps:,} steps in {self.seconds:.0f}s; "
                f"val loss over {self.scope}: {self.val_loss:.4f}")


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


Event = Union[Note, Prepared, Started, Evaluated, CheckpointSaved, Stopped, Finished, Saved, NothingSaved]
Listener = Callable[[Any], None]


def in_words(log: Callable[[str], None]) -> Listener:
    """A listener that hands each event's words to `log` (e.g. print to stderr)."""
    return lambda event: log(event.words())


_note_listener: ContextVar[Listener | None] = ContextVar("repytilian_note_listener", default=None)


def note(text: str, kind: str = "note") -> None:
    """Tell whoever listens for notes (see `notes_to`); by default a line on stderr."""
    listener = _note_listener.get()
    if listener is None:
        print(text, file=sys.stderr, flush=True)
    else:
        listener(Note(text, kind))


@contextmanager
def notes_to(listener: Listener | None) -> Iterator[None]:
    """Within the block, `note()` hands its Note events to `listener` (None: to stderr)."""
    token = _note_listener.set(listener)
    try:
        yield
    finally:
        _note_listener.reset(token)
