"""Continuous batching: one model's running batch in a thread of its own, which requests join.

A request submitted from any thread joins the batch at its next token step (its prompt is
prefilled then) and leaves it when it ends; between two steps nothing waits for anything else.
Its events go to the sink given with it, from the loop's thread, as they come; then `None` (done)
or the exception that ended it. The server runs `Lanes` of loops per loaded model; the engine
(engine.py) does the work, this only keeps it going.

A request waits (in order) while the batch has no room for its samples (`max_rows`): the cache
grows to the most rows used at once, so this bounds memory as well as the step's time.

`Lanes`: several such loops of one model, a request going to the one with the fewest samples.
Where a built step decodes, each lane's tokens are made in C without the interpreter's lock
(decode_loop.py), so lanes step on different cores at once; one batch loop leaves a core to the
server's event loop and its Python between calls. Measured on a 2-core Xeon with AMX (2026-12-04),
64-token requests, built bf16 steps, two lanes against one: in process, 8 v2c requests 32,138 tokens/s
(two lanes of 4) against 22,964; through `repytilian serve` (benchmarks/serve_load.py; more in
docs/serving.md) 8 clients 16,069-16,189 against 14,577-14,806 on v2c, 12,169-12,361 against
9,951-10,300 on v3c; a lone request as fast as before. With float32 steps (narrow models' since):
v2c 8 clients 12,814-12,889 against 10,290-10,443.
"""
from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import decode_loop
from .engine import Engine, Event, Job, Request
from .events import notes_to

Sink = Callable[[Any], None]  # gets each Event, then None (done) or the exception that ended the request
_STOP = object()
CLOSE_WAIT_SECONDS = 5.0


class BatchLoop:
    def __init__(self, engine: Engine, max_rows: int = 32, busy_threads: int | None = None,
                 threads: int | None = None, lanes: Lanes | None = None):
        self.engine, self.max_rows = engine, max_rows
        # OpenMP keeps a thread count per thread: a new thread would start from the environment's,
        # not from what this process set (torch.set_num_threads), so the loop sets its own:
        # `threads` (default: the calling thread's) for a request alone, `busy_threads` for several
        # (runtime/cpu.threads_beside_a_server)
        self.threads = threads or torch.get_num_threads()
        self.busy_threads = busy_threads or self.threads
        self.most_rows = 0  # the most samples decoding together so far
        self.rows = 0  # samples decoding now
        self.load = 0  # samples submitted and not done (decoding or waiting)
        self._lanes = lanes  # the model's lanes this loop is one of, if any
        self._submitted: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, request: Request, sink: Sink) -> None:
        """`request` joins the batch at its next step; its events go to `sink` (see the module)."""
        samples = request.num_samples

        def counted(item: Any) -> None:
            if item is None or isinstance(item, BaseException):
                with self._lock:
                    self.load -= samples
            sink(item)
        with self._lock:
            self.load += samples
        self.start()
        self._submitted.put((request, counted))

    def start(self) -> None:
        """Starts the loop's thread, which makes its decoder ready, if not started yet (submit does)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch", daemon=True)
                self._thread.start()

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """The loop ends once the requests in it have (nothing new joins); this waits up to `wait`
        seconds for its thread to be done. The server closes a loop when its model is let go (no
        request holds it then) and at exit: a thread still freeing tensors while the interpreter
        shuts down makes the process abort ("terminate called without an active exception")."""
        self._submitted.put(_STOP)
        self.join(wait)

    def join(self, wait: float) -> None:
        """Waits up to `wait` seconds for the loop's thread to end (after close())."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _run(self) -> None:
        with notes_to(lambda event: None), self.engine.batch() as batch:
            compiled = batch.decoder.compiled if batch.decoder is not None else None
            if compiled is not None:
                batch.decoder.prepare_rows()  # where a step is built: the one for several rows too
                compiled.same_as_batches = True  # a request alone gets the numbers it gets in a batch
            try:
                self._serve(batch)
            finally:
                if compiled is not None:
                    compiled.same_as_batches = False  # the decoder goes back to the engine's other uses

    def _serve(self, batch: Any) -> None:
        """Admits and steps until closed and done (on the loop's thread)."""
        threads = 0
        waiting: collections.deque = collections.deque()
        sinks: dict[Job, Sink] = {}
        stopping = False
        while not (stopping and not batch and not waiting):
            stopping = self._collect(waiting, block=not batch and not waiting) or stopping
            if not batch and not waiting:
                continue
            with self._turn() as wanted:
                if wanted != threads:
                    threads = wanted
                    torch.set_num_threads(threads)
                self._admit(batch, waiting, sinks)
                if len(batch) != self.rows:
                    self.rows = len(batch)
                    if self._lanes is not None:
                        self._lanes.rows_changed()
                if batch:
                    self.most_rows = max(self.most_rows, len(batch))
                    self._step(batch, sinks)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[int]:
        """The threads to compute on for one turn (admitting requests, a call's steps): all of them
        for a sample alone, else the busy count; in lanes, as Lanes.turn shares them."""
        if self._lanes is not None:
            with self._lanes.turn(self) as threads:
                yield threads
        else:
            yield self.threads if self.load == 1 else self.busy_threads

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


def steps_in_c(engine: Engine) -> bool:
    """Whether `engine` decodes a batch of several rows several steps a call in C, letting go of
    the interpreter's lock meanwhile (a built batch step, found or built, and the decoding loop):
    where lanes pay. Eager batches hold the lock for most of a step: two lanes of them gave 2,119
    and 2,128 tokens/s against 5,267 and 5,720 with one (v2c, 8 clients, 2-core Xeon, 2026-12-04)."""
    with engine.batch() as batch:
        decoder = batch.decoder
        if decoder is None or decoder.compiled is None:
            return False
        decoder.prepare_rows()  # loads the batch step where one was built
        return decoder.compiled.rows.run is not None and decode_loop.available()


def small_steps(engine: Engine) -> bool:
    """Whether `engine` decodes through built steps (steps_in_c) a model small enough for a row's step
    to be no faster on two threads than on one (decode_compiled.SMALL_MODEL_BYTES): a request alone
    in a server then decodes on a lane's threads, not on all, where a second thread only waited for
    work. Measured on a 2-core Xeon (2026-12-04, serve_load.py, one client's 64-token
    requests): v2c 16 ms a request either way, 15.2-15.5 ms of the server's CPU against 22.5 on two
    threads (two A/B pairs); with OMP_NUM_THREADS 1 and 2, v3c 25 ms either way, 24.7 ms of CPU
    against 29.0, and the `hyper` shape (not small) 73 ms against 67, its CPU alike."""
    with engine.batch() as batch:
        compiled = batch.decoder.compiled if batch.decoder is not None else None
        return compiled is not None and compiled.small


def _send(sink: Sink, events: list[Event]) -> None:
    for event in events:
        sink(event)


class Lanes:
    """A model's batch loops ("lanes", module docstring): a request goes to the lane with the fewest
    samples (the first of those: a lone request finds the first lane's decoder warm), the model's
    `max_rows` shared out among them, and `busy_threads` too (at least one a lane); a sample
    decoding alone in the whole model takes `threads`, as one batch loop's does. Every lane starts,
    and makes its decoder, as the lanes are made (a v2c lane's decoder with its built steps: 30 ms)."""

    def __init__(self, engine: Engine, lanes: int = 1, max_rows: int = 32, busy_threads: int | None = None,
                 threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self.busy_threads = max(1, (busy_threads or self.threads) // lanes)
        self.most_rows = 0  # the most samples decoding together in all lanes so far
        self._wide: BatchLoop | None = None  # the lane whose turn is on all the threads, if any
        self._changed = threading.Condition()
        self.loops = [BatchLoop(engine, -(-max_rows // lanes), self.busy_threads, self.threads, lanes=self)
                      for _ in range(lanes)]
        for loop in self.loops:  # each makes its decoder now, not when a request waits for it
            loop.start()

    def submit(self, request: Request, sink: Sink) -> None:
        """As BatchLoop.submit, in the lane with the fewest samples."""
        min(self.loops, key=lambda loop: loop.load).submit(request, sink)

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """Each lane's close(), waiting up to `wait` seconds for them all."""
        for loop in self.loops:
            loop.close(0)
        end = time.monotonic() + wait
        for loop in self.loops:
            loop.join(max(0.0, end - time.monotonic()))

    @contextlib.contextmanager
    def turn(self, lane: BatchLoop) -> Iterator[int]:
        """A turn of `lane` (BatchLoop._turn), on all the threads where its one sample is all the
        lanes have, else on its share. A lane waits for another's turn on all of them to end first:
        a team of OpenMP threads on a core another lane computes on stalls at every parallel region
        (with a lone v3c request on both threads as a second lane started, 8 clients got 3,580
        tokens/s, p99 405 ms; with this wait 12,169-12,361, p99 50-56 ms)."""
        with self._changed:
            while self._wide not in (None, lane):
                self._changed.wait()
            wide = self.load() == 1
            self._wide = lane if wide else None
        try:
            yield self.threads if wide else self.busy_threads
        finally:
            if wide:
                with self._changed:
                    self._wide = None
                    self._changed.notify_all()

    def load(self) -> int:
        """Samples submitted to the lanes and not done."""
        return sum(loop.load for loop in self.loops)

    def rows_changed(self) -> None:  # on a lane's thread, as its batch grows or shrinks
        self.most_rows = max(self.most_rows, sum(loop.rows for loop in self.loops))
