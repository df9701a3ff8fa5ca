"""Admission: which requests generate, and when. Knows the models, the limits and each model's
batch loop; turns a request's JSON into the engine's `Request`; hands it to the model's running
batch and its events back to the event loop.

Every request that generates passes a gate first: at most `max_active` generations run at once,
at most `max_waiting` more wait for a turn, and anything beyond is refused at once with a 429, so
a busy server answers quickly instead of piling up work. The generations that run decode
together: each model has one running batch in a thread of its own (batch_loop.py), which a
request joins at its next token step (continuous batching; generation never runs on the event
loop). A client that goes away cancels its generation at the next token.

Threads. OpenMP gives every thread that computes in parallel a team of worker threads of its own,
kept until that thread ends. With more OpenMP threads in the process than cores, libgomp stops
its workers waiting actively between two parallel regions: each of a decoding step's regions then
wakes them from sleep. A team kept by the thread that loaded a model, beside the batch loop's,
made a lone 64-token request take 173 ms instead of 38 (2-core Xeon, 2026-12-04). So the work
that is not decoding (loads, inspection) runs in a thread that ends with it, and the event loop's
thread computes on one thread (cli/serve.py): the batch loops' teams are the process's only ones.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest

from ..batch_loop import Lanes, small_steps, steps_in_c
from ..engine import Request, Token
from ..errors import RepytilianError
from ..events import notes_to
from ..language_model import LanguageModel
from ..runtime.cpu import batch_lanes, threads_beside_a_server
from ..sampling import SamplingOptions
from ..tokenizers import UnknownTokensError
from .http import ApiError, log, number, stop_strings, whole
from .limits import Limits
from .registry import ModelInfo, ModelNotFound, Registry


class Gate:
    """At most `active` at once, `waiting` more in the queue; the rest are refused."""

    def __init__(self, active: int, waiting: int, wait_seconds: float):
        self.semaphore = asyncio.Semaphore(active)
        self.active_limit, self.waiting_limit, self.wait_seconds = active, waiting, wait_seconds
        self.active = 0
        self.waiting = 0

    async def enter(self) -> None:
        if self.waiting >= self.waiting_limit and self.active >= self.active_limit:
            raise ApiError(429, f"the server is busy: {self.active} generations running and {self.waiting} waiting; "
                                "try again in a moment", "rate_limit_exceeded", code="rate_limit_exceeded")
        self.waiting += 1
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait_seconds)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no turn came within {self.wait_seconds:g} s; the server is busy, try again later",
                           "server_busy", code="server_busy") from None
        finally:
            self.waiting -= 1
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self.semaphore.release()


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Server:
    def __init__(self, registry: Registry, limits: Limits | None = None):
        self.registry = registry
        self.limits = limits or Limits()
        self._loops: weakref.WeakKeyDictionary[LanguageModel, Lanes] = weakref.WeakKeyDictionary()
        # decoding threads, read now: the event loop's thread may compute on one from now on (above)
        self.threads, self.busy_threads = torch.get_num_threads(), threads_beside_a_server()
        self._work_turn = threading.Lock()  # loads and inspection, one at a time
        self._loops_lock = threading.Lock()
        self._gate: Gate | None = None
        self.started = time.time()
        self.generated = 0  # tokens, for /api/status

    @property
    def gate(self) -> Gate:
        if self._gate is None:  # made on the event loop that serves the requests
            self._gate = Gate(self.limits.max_active, self.limits.max_waiting, self.limits.wait_seconds)
        return self._gate

    async def body(self, request: HttpRequest) -> dict[str, Any]:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {int(declared):,} bytes; the limit is {limit:,}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request body is over the limit of {limit:,} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # gone before its body was whole: nobody reads the answer
            raise ApiError(400, "the client went away before its request was whole") from None
        try:
            data = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    async def model(self, body: dict[str, Any]) -> tuple[ModelInfo, LanguageModel]:
        """The model a request names; one not loaded yet is loaded in a worker thread (never on the
        event loop), after a turn at the gate like a generation (a load is work of that size)."""
        name = body.get("model")
        try:
            info = self.registry.default() if name in (None, "") else self.registry.find(name)
            lm = self.registry.loaded(info) or await self._load(info)
        except ModelNotFound as e:
            raise ApiError(404, str(e), param="model", code="model_not_found") from None
        except RepytilianError as e:  # its words name files of this machine: the log has them, the client not
            log(f"model {info.id} could not be loaded: {e}")
            raise ApiError(500, f"model {info.id} could not be loaded (the server's log says why)",
                           "server_error") from None
        return info, lm

    async def _load(self, info: ModelInfo) -> LanguageModel:
        return await self.work(self.registry.load, info)

    async def work(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` in the worker thread, never on the event loop, after a turn at the gate (loading
        a model or looking inside one is work of a generation's size)."""
        await self.gate.enter()
        try:
            # a pool of one thread for this job alone: its thread, and its OpenMP team, end with the job
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="work")
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, self._in_turn, fn, *args)
            finally:
                pool.shutdown(wait=False)
        finally:
            self.gate.leave()

    def _in_turn(self, fn: Any, *args: Any) -> Any:
        """fn(*args) once the work before it is done (taken in the work's thread: a request that
        stops waiting does not let the next one start beside its work)."""
        with self._work_turn:
            return fn(*args)

    def chat_prompt_ids(self, lm: LanguageModel, turns: list[tuple[str, str]]) -> tuple[list[int], list[str]]:
        """A conversation's prompt ids in the model's chat format (or script) and the stops of the answer."""
        chars = sum(len(content) for _, content in turns)
        if chars > self.limits.max_prompt_chars:
            raise ApiError(400, f"the messages have {chars:,} characters; the limit is "
                                f"{self.limits.max_prompt_chars:,}", param="messages")
        try:
            with notes_to(lambda event: None):  # "the model sees only the last N": expected here
                return lm.chat_prompt(turns)
        except UnknownTokensError as e:
            raise ApiError(400, str(e), param="messages") from None

    def prompt_ids(self, lm: LanguageModel, prompt: Any, param: str = "prompt") -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if len(prompt) > self.limits.max_prompt_chars:
                raise ApiError(400, f"the prompt has {len(prompt):,} characters; the limit is "
                                    f"{self.limits.max_prompt_chars:,}", param=param)
            try:
                with notes_to(lambda event: None):  # "the model sees only the last N": expected here
                    return lm.encode_prompt(prompt)
            except UnknownTokensError as e:
                raise ApiError(400, str(e), param=param) from None
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = lm.tokenizer.vocab_size
            if len(prompt) > self.limits.max_prompt_chars:
                raise ApiError(400, f"the prompt has {len(prompt):,} tokens; the limit is "
                                    f"{self.limits.max_prompt_chars:,}", param=param)
            if not all(0 <= t < vocab for t in prompt):
                raise ApiError(400, f"token ids must be between 0 and {vocab - 1} for this model", param=param)
            return list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(400, "one prompt per request (use n for several completions of it)", param=param)
        raise ApiError(400, "the prompt must be a string or a list of token ids", param=param)

    def request(self, body: dict[str, Any], ids: list[int], default_max: int, stop: list[str] | None = None,
                max_name: str = "max_tokens") -> Request:
        """The engine's request for a JSON body. Sampling fields left out take SamplingOptions's
        defaults, as on the command line and in Python; a request without a seed draws from the
        process's generator (the server never tells a seed it did not get)."""
        lim, defaults = self.limits, SamplingOptions()
        max_tokens = whole(body, max_name, default_max, 0, lim.max_tokens)
        top_p = number(body, "top_p", defaults.top_p, 0.0, 1.0)
        if top_p == 0:
            raise ApiError(400, "top_p must be more than 0", param="top_p")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ApiError(400, "seed must be an integer", param="seed")
        sampling = SamplingOptions(temperature=number(body, "temperature", defaults.temperature, 0.0, 2.0),
                                   top_k=whole(body, "top_k", defaults.top_k, 0, 1_000_000),  # not OpenAI's; 0 is off
                                   top_p=top_p,
                                   seed=seed)
        return Request(ids, max_tokens, sampling, whole(body, "n", 1, 1, lim.max_n),
                       stop_strings(body.get("stop")) + list(stop or []), logprobs=True, max_seconds=lim.max_seconds)

    async def events(self, http: HttpRequest, lm: LanguageModel, request: Request) -> AsyncIterator[Any]:
        """The request joins its model's batch once the gate lets it in; its events, as they come. A
        client that goes away, while waiting for its turn or while its answer is made, cancels it."""
        gone = asyncio.create_task(_client_gone(http))
        cancel = threading.Event()
        request.cancelled = cancel.is_set
        try:
            if not await self._admitted(gone):
                return
            async for item in self._run(lm, request, cancel, gone):
                yield item
        finally:
            gone.cancel()
            cancel.set()  # a client gone, or an error: the worker stops at its next token

    async def _admitted(self, gone: asyncio.Task) -> bool:
        """Through the gate (429 or 503 raised as they come); False if the client left first."""
        enter = asyncio.create_task(self.gate.enter())
        await asyncio.wait({enter, gone}, return_when=asyncio.FIRST_COMPLETED)
        if enter.done():
            enter.result()
            return True
        enter.cancel()  # the gate counts it out of the queue
        with contextlib.suppress(asyncio.CancelledError):
            await enter
        return False

    def loop(self, lm: LanguageModel) -> Lanes:
        """The model's running batches (made at its first request; they end when the model is unloaded):
        one on a GPU, `limits.lanes` on a CPU (by default runtime/cpu.batch_lanes where its batches
        decode through a built step's loop, batch_loop.steps_in_c, else one). Made in a worker
        thread by a request (`_run`): finding out may make a decoder (tens of milliseconds)."""
        with self._loops_lock:  # one set of lanes a model, however many requests ask at once
            return self._loops.get(lm) or self._new_lanes(lm)

    def _new_lanes(self, lm: LanguageModel) -> Lanes:
        on_cpu = lm.model.lm_head.weight.device.type == "cpu"
        built = on_cpu and steps_in_c(lm.engine)
        lanes = (self.limits.lanes or (batch_lanes() if built else 1)) if on_cpu else 1
        # a request alone takes every thread, but for a small model's built steps (no faster on more)
        alone = self.busy_threads if built and small_steps(lm.engine) else self.threads
        made = self._loops[lm] = Lanes(lm.engine, lanes, self.limits.max_batch_rows,
                                       self.busy_threads if on_cpu else None, alone)
        weakref.finalize(lm, made.close)
        return made

    def most_rows(self) -> int:
        """The most samples any model has decoded together since the server started."""
        return max((loop.most_rows for loop in list(self._loops.values())), default=0)

    async def _run(self, lm: LanguageModel, request: Request, cancel: threading.Event,
                   gone: asyncio.Task) -> AsyncIterator[Any]:
        inbox = _Inbox(asyncio.get_running_loop(), cancel)
        gone.add_done_callback(lambda _: inbox.ready.set())
        finished = False
        try:
            lanes = self._loops.get(lm) or await asyncio.to_thread(self.loop, lm)
            lanes.submit(request, inbox.put)
            while not finished and not gone.done():
                await inbox.ready.wait()
                inbox.ready.clear()
                while inbox.items and not finished:
                    item = inbox.items.popleft()
                    if item is None:
                        finished = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        if isinstance(item, Token):
                            self.generated += 1
                        yield item
        finally:
            if not finished:  # the client went away, or an error: the batch ends it at its next step
                cancel.set()
            self.gate.leave()


class _Inbox:
    """A request's events, put by the batch's thread and taken on the event loop. The loop is woken
    at once for a request's first events and its end, and in between at most every WAKE_SECONDS
    for whatever has come since: each wake-up holds the interpreter's lock while the batch's
    thread waits for it between two of its operations (measured at one client, v2c: 2.6 ms a token
    in the server against 1.8 in process when woken for every token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cancel: threading.Event):
        self.loop, self.cancel = loop, cancel
        self.items: collections.deque = collections.deque()
        self.ready = asyncio.Event()
        self._waking = False
        self._last_wake = 0.0

    def put(self, item: Any) -> None:  # on the batch's thread
        self.items.append(item)
        if self._waking and item is not None:
            return
        self._waking = True
        delay = 0.0 if item is None else self._last_wake + WAKE_SECONDS - time.monotonic()
        try:
            if delay <= 0:
                self.loop.call_soon_threadsafe(self._wake)
            else:
                self.loop.call_soon_threadsafe(self.loop.call_later, delay, self._wake)
        except RuntimeError:  # the event loop is gone (shutting down): nobody is listening
            self.cancel.set()

    def _wake(self) -> None:
        self._waking = False
        self._last_wake = time.monotonic()
        self.ready.set()


WAKE_SECONDS = 0.02  # streamed text comes in pieces of up to this long: smooth to a reader, cheap to the batch
DISCONNECT_POLL_SECONDS = 0.1  # how soon a client that went away is noticed


async def _client_gone(http: HttpRequest) -> None:
    """Returns when the client has closed its connection."""
    while not await http.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
