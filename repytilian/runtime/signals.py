"""Signals as requests to stop: SIGINT (Ctrl+C), SIGTERM and SIGUSR1 end training at the next step
boundary, then the run saves; a second Ctrl+C during the save abandons it, cleanly."""
from __future__ import annotations

import signal
import threading
from typing import Any

from ..events import note


class StopRequest:
    """Set by SIGINT/SIGTERM/SIGUSR1 (or by code, e.g. a server) to end training at the next step boundary."""

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s)

    def __init__(self, at_step: int | None = None) -> None:
        self.reason: str | None = None
        self.at_step = at_step  # also stop (as if signalled) once this many steps are done
        self.saving = False
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.saving:
            if signum == signal.SIGINT:  # the impatient second Ctrl+C: give up this save, cleanly
                note("\nCtrl+C again: abandoning the save; earlier saved models are untouched")
                raise KeyboardInterrupt
            note(f"\n{name}: still saving, please wait (Ctrl+C abandons the save)")
            return
        if self.reason is None:
            note(f"\n{name} received: finishing this step, then saving "
                 "(press Ctrl+C again during the save to abandon it)")
        self.request(name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
