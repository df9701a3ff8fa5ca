"""Continuous batching: one model's running batch in a thread of its own, which requests join.

A request submitted from any thread joins the batch at its next token step (its prompt is
prefilled then) and leaves it when it ends; between two steps nothing waits for anything else.
Its events go to the sink given with it, from the loop's thread, as they come; then `None` (done)
or the exception that ended it. The server runs one loop per loaded model; the engine
(engine.py) does the work, this only keeps it going.

A request waits (in order) while the batch has no room for its samples (`max_rows`): the cache
grows to the most rows used at once, so this bounds memory as well as the step's time.
"""
from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

from .engine import Engine, Event, Job, Request
from .events import notes_to

Sink = Callable[[Any], None]  # gets each Event, then None (done) or the exception that ended the request
_STOP = object()
CLOSE_WAIT_SECONDS = 5.0


class BatchLoop:
    def __init__(self, engine: Engine, max_rows: int = 32, busy_threads: int | None = None,
                 threads: int | None = None):
        self.engine, self.max_rows = engine, max_rows
        # OpenMP keeps a thread count per thread: a new thread would start from the environment's,
        # not from what this process set (torch.set_num_threads), so the loop sets its own:
        # `threads` (default: the calling thread's) for a request alone, `busy_threads` for several
        # (runtime/cpu.threads_beside_a_server)
        self.threads = threads or torch.get_num_threads()
        self.busy_threads = busy_threads or self.threads
        self.most_rows = 0  # the most samples decoding together so far
        self._submitted: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, request: Request, sink: Sink) -> None:
        """`request` joins the batch at its next step; its events go to `sink` (see the module)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch", daemon=True)
                self._thread.start()
        self._submitted.put((request, sink))

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """The loop ends once the requests in it have (nothing new joins); this waits up to `wait`
        seconds for its thread to be done. The server closes a loop when its model is let go (no
        request holds it then) and at exit: a thread still freeing tensors while the interpreter
        shuts down makes the process abort ("terminate called without an active exception")."""
        self._submitted.put(_STOP)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _run(self) -> None:
        threads = self.threads
        torch.set_num_threads(threads)
        with notes_to(lambda event: None), self.engine.batch() as batch:
            waiting: collections.deque = collections.deque()
            sinks: dict[Job, Sink] = {}
            stopping = False
            while not (stopping and not batch and not waiting):
                stopping = self._collect(waiting, block=not batch and not waiting) or stopping
                self._admit(batch, waiting, sinks)
                if batch:
                    self.most_rows = max(self.most_rows, len(batch))
                    wanted = self.threads if len(batch) == 1 else self.busy_threads
                    if wanted != threads:
                        threads = wanted
                        torch.set_num_threads(threads)
                    self._step(batch, sinks)

    def _collect(self, waiting: collections.deque, block: bool) -> bool:
        """New submissions into `waiting` (waiting for one when there is nothing to do); True on close()."""
        try:
            item = self._submitted.get(block=block)
            while True:
                if item is _STOP:
                    return True
                waiting.append(item)
                item = self._submitted.get_nowait()
        except queue.Empty:
            return False

    def _admit(self, batch: Any, waiting: collections.deque, sinks: dict[Job, Sink]) -> None:
        while waiting and (not batch or len(batch) + waiting[0][0].num_samples <= self.max_rows):
            request, sink = waiting.popleft()
            try:
                job, events = self.engine.start(batch, request)
            except Exception as e:  # noqa: BLE001 - a bad request fails alone
                sink(e)
                continue
            _send(sink, events)
            if job.done:
                sink(None)
            else:
                sinks[job] = sink

    def _step(self, batch: Any, sinks: dict[Job, Sink]) -> None:
        try:
            events = self.engine.step(batch)
        except Exception as e:  # noqa: BLE001 - the model failed: every request in the batch ends with it
            for job, sink in sinks.items():
                sink(e)
                for seq in job.group.live:
                    batch.drop(seq)
            sinks.clear()
            return
        for job, event in events:
            sinks[job](event)
        for job in [job for job in sinks if job.done]:
            sinks.pop(job)(None)


def _send(sink: Sink, events: list[Event]) -> None:
    for event in events:
        sink(event)
