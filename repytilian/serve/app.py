"""The ASGI app: the playground's page and API (/, /api/...) and the OpenAI-compatible API (/v1/...).

Every request that generates passes a gate first: at most `max_active` generations run at once
(worker threads: generation never runs on the event loop), at most `max_waiting` more wait for a
turn, and anything beyond is refused at once with a 429, so a busy server answers quickly
instead of piling up work. Errors of every kind come back in OpenAI's JSON shape
({"error": {"message", "type", "param", "code"}}), never as a traceback.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..api import LanguageModel
from ..errors import RepytilianError, SettingError
from ..events import notes_to
from ..sampling import SamplingOptions
from ..store.live import current_metrics, live_path
from ..tokenizers import UnknownTokensError
from .chat import ChatError, chat_prompt
from .generation import ChoiceEnd, Job, TextOut, TokenOut, run_job, token_label
from .limits import Limits
from .registry import ModelInfo, ModelNotFound, Registry

STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


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
        self.executor = ThreadPoolExecutor(max_workers=self.limits.max_active, thread_name_prefix="generate")
        self._gate: Gate | None = None
        self.started = time.time()
        self.generated = 0  # tokens, for /api/status

    @property
    def gate(self) -> Gate:
        if self._gate is None:  # made on the event loop that serves the requests
            self._gate = Gate(self.limits.max_active, self.limits.max_waiting, self.limits.wait_seconds)
        return self._gate

    # --- what requests share -------------------------------------------------------------

    async def body(self, request: Request) -> dict[str, Any]:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {int(declared):,} bytes; the limit is {limit:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def model(self, body: dict[str, Any]) -> tuple[ModelInfo, LanguageModel]:
        name = body.get("model")
        try:
            info = self.registry.default() if name in (None, "") else self.registry.find(name)
        except ModelNotFound as e:
            raise ApiError(404, str(e), param="model", code="model_not_found") from None
        try:
            return info, self.registry.load(info)
        except RepytilianError as e:
            raise ApiError(500, f"model {info.id} could not be loaded: {e}", "server_error") from None

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

    def job(self, body: dict[str, Any], ids: list[int], default_max: int, stop: list[str] | None = None,
            max_name: str = "max_tokens") -> Job:
        lim = self.limits
        max_tokens = _int(body, max_name, default_max, 0, lim.max_tokens)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:
            raise ApiError(400, "top_p must be more than 0", param="top_p")
        top_k = _int(body, "top_k", 0, 0, 1_000_000)  # not OpenAI's; 0 (or absent) is off
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ApiError(400, "seed must be an integer", param="seed")
        n = _int(body, "n", 1, 1, lim.max_n)
        stops = _stops(body.get("stop")) + list(stop or [])
        sampling = SamplingOptions(temperature=temperature, top_k=top_k or None, top_p=top_p,
                                   seed=seed if seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "big"))
        return Job(ids, max_tokens, sampling, n, stops, 0, lim.max_seconds)

    async def events(self, request: Request, lm: LanguageModel, job: Job) -> AsyncIterator[Any]:
        """Run the job in a worker thread once the gate lets it in; its events, as they come."""
        await self.gate.enter()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutting down): nobody is listening
                cancel.set()

        def work() -> None:
            try:
                with notes_to(lambda event: None):
                    for event in run_job(lm, job, cancel.is_set):
                        put(event)
            except BaseException as e:  # noqa: BLE001 - handed to the request, which answers with it
                put(_Failure(e))
            finally:
                put(_DONE)

        future = loop.run_in_executor(self.executor, work)
        future.add_done_callback(lambda _: self.gate.leave())  # the turn ends when the work does
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, TokenOut):
                    self.generated += 1
                yield item
        finally:
            cancel.set()  # a client gone, or an error: the worker stops at its next token


# --- helpers for request fields --------------------------------------------------------------


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}", param=name)
    return float(value)


def _int(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}", param=name)
    return value


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return [s for s in value if s]
    raise ApiError(400, "stop must be a string or a list of at most 4 strings", param="stop")


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except ApiError as e:  # once the answer has begun, an error can only be one more event
            yield _sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
        except RepytilianError as e:
            yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
        except Exception as e:  # noqa: BLE001 - logged; the client gets a message, the server goes on
            print(f"repytilian serve: a stream failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            yield _sse({"error": {"message": "generation failed on the server", "type": "server_error",
                                  "param": None, "code": None}})

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _first_then_rest(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Start the generator before answering, so that a 429 or a bad model is a status, not a stream."""
    first = await chunks.__anext__()

    async def joined() -> AsyncIterator[str]:
        yield first
        async for chunk in chunks:
            yield chunk

    return joined()


# --- the OpenAI-compatible API ---------------------------------------------------------------


async def list_models(request: Request) -> Response:
    server: Server = request.app.state.server
    data = [{"id": m.id, "object": "model", "created": m.created, "owned_by": "repytilian"}
            for m in server.registry.scan()]
    return JSONResponse({"object": "list", "data": data})


def _completion_logprobs(tokens: list[TokenOut], offset0: int = 0) -> dict[str, Any]:
    offsets, at = [], offset0
    for t in tokens:
        offsets.append(at)
        at += len(t.text)
    return {"tokens": [t.label for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{label: lp for _, label, lp in reversed(t.top)} for t in tokens],
            "text_offset": offsets}


async def completions(request: Request) -> Response:
    server: Server = request.app.state.server
    body = await server.body(request)
    info, lm = server.model(body)
    if body.get("echo"):
        raise ApiError(400, "echo is not supported", param="echo")
    ids = server.prompt_ids(lm, body.get("prompt", ""))
    job = server.job(body, ids, 16)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        job.alternatives = _int(body, "logprobs", 0, 0, server.limits.max_alternatives)
    created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
    base = {"id": cid, "object": "text_completion", "created": created, "model": info.id}

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncIterator[str]:
            produced = 0
            offsets = [0] * job.n
            async for event in server.events(request, lm, job):
                if isinstance(event, (TokenOut, TextOut)):
                    lp = None
                    if isinstance(event, TokenOut):
                        produced += 1
                        if logprobs is not None:
                            lp = _completion_logprobs([event], offsets[event.choice])
                    offsets[event.choice] += len(event.text)
                    if event.text or lp is not None:
                        yield _sse({**base, "choices": [{"text": event.text, "index": event.choice, "logprobs": lp,
                                                         "finish_reason": None}]})
                elif isinstance(event, ChoiceEnd):
                    yield _sse({**base, "choices": [{"text": "", "index": event.choice, "logprobs": None,
                                                     "finish_reason": event.finish_reason}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(len(ids), produced)})
            yield "data: [DONE]\n\n"

        return _stream(await _first_then_rest(chunks()))

    texts, tokens, reasons = await _collect(server, request, lm, job)
    choices = [{"text": texts[i], "index": i,
                "logprobs": _completion_logprobs(tokens[i]) if logprobs is not None else None,
                "finish_reason": reasons[i]} for i in range(job.n)]
    return JSONResponse({**base, "choices": choices, "usage": _usage(len(ids), sum(map(len, tokens)))})


async def _collect(server: Server, request: Request, lm: LanguageModel, job: Job
                   ) -> tuple[list[str], list[list[TokenOut]], list[str]]:
    """A whole answer: each choice's text, its tokens and why it ended."""
    texts = [""] * job.n
    tokens: list[list[TokenOut]] = [[] for _ in range(job.n)]
    reasons = ["length"] * job.n
    async for event in server.events(request, lm, job):
        if isinstance(event, TokenOut):
            tokens[event.choice].append(event)
        if isinstance(event, (TokenOut, TextOut)):
            texts[event.choice] += event.text
        elif isinstance(event, ChoiceEnd):
            reasons[event.choice] = event.finish_reason
    return texts, tokens, reasons


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprob(t: TokenOut) -> dict[str, Any]:
    def one(label: str, lp: float) -> dict[str, Any]:
        return {"token": label, "logprob": lp, "bytes": list(label.encode("utf-8"))}

    return {**one(t.label, t.logprob), "top_logprobs": [one(label, lp) for _, label, lp in t.top]}


async def chat_completions(request: Request) -> Response:
    server: Server = request.app.state.server
    body = await server.body(request)
    info, lm = server.model(body)
    try:
        prompt, stops = chat_prompt(body.get("messages"), info)
    except ChatError as e:
        raise ApiError(400, str(e), param=e.param, code=e.code) from None
    ids = server.prompt_ids(lm, prompt, param="messages")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    job = server.job(body, ids, 256, stop=stops, max_name=name)
    want_logprobs = bool(body.get("logprobs"))
    if want_logprobs:
        job.alternatives = _int(body, "top_logprobs", 0, 0, server.limits.max_alternatives)
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    base = {"id": cid, "created": created, "model": info.id}

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncIterator[str]:
            chunk = {**base, "object": "chat.completion.chunk"}
            produced = 0
            events = server.events(request, lm, job)
            first = await events.__anext__()  # through the gate before the first byte of the answer
            for i in range(job.n):
                yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            async for event in _chain(first, events):
                if isinstance(event, (TokenOut, TextOut)):
                    lp = None
                    if isinstance(event, TokenOut):
                        produced += 1
                        if want_logprobs:
                            lp = {"content": [_chat_logprob(event)]}
                    if event.text or lp is not None:
                        yield _sse({**chunk, "choices": [{"index": event.choice, "delta": {"content": event.text},
                                                          "logprobs": lp, "finish_reason": None}]})
                elif isinstance(event, ChoiceEnd):
                    yield _sse({**chunk, "choices": [{"index": event.choice, "delta": {}, "logprobs": None,
                                                      "finish_reason": event.finish_reason}]})
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage(len(ids), produced)})
            yield "data: [DONE]\n\n"

        return _stream(await _first_then_rest(chunks()))

    texts, tokens, reasons = await _collect(server, request, lm, job)
    choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                "logprobs": {"content": [_chat_logprob(t) for t in tokens[i]]} if want_logprobs else None,
                "finish_reason": reasons[i]} for i in range(job.n)]
    return JSONResponse({**base, "object": "chat.completion", "choices": choices,
                         "usage": _usage(len(ids), sum(map(len, tokens)))})


# --- the playground's own API ----------------------------------------------------------------


async def playground_models(request: Request) -> Response:
    server: Server = request.app.state.server
    models = []
    for m in server.registry.scan(training=True):
        models.append({**m.to_dict(), "training": live_path(m.path).is_file()})
    return JSONResponse({"models": models, "limits": {"max_tokens": server.limits.max_tokens}})


async def playground_card(request: Request) -> Response:
    server: Server = request.app.state.server
    try:
        info = server.registry.find(request.query_params.get("model"), training=True)
    except ModelNotFound as e:
        raise ApiError(404, str(e), param="model", code="model_not_found") from None
    card_file = info.path / "README.md"
    card = card_file.read_text(encoding="utf-8", errors="replace") if card_file.is_file() else ""
    metrics, live = current_metrics(info.path)
    return JSONResponse({**info.to_dict(), "card": card, "metrics": metrics, "training": live})


async def playground_generate(request: Request) -> Response:
    """Server-sent events for the playground: the prompt's tokens, then each new token with its
    probability and its likeliest alternatives, then a summary."""
    server: Server = request.app.state.server
    body = await server.body(request)
    info, lm = server.model(body)
    source = body.get("prompt_ids") if body.get("prompt_ids") is not None else body.get("prompt", "")
    ids = server.prompt_ids(lm, source)
    job = server.job({**body, "n": 1}, ids, 200)
    job.alternatives = server.limits.max_alternatives

    async def chunks() -> AsyncIterator[str]:
        yield _sse({"type": "start", "model": info.id, "prompt_ids": ids,
                    "prompt_labels": [token_label(lm.tokenizer, i) for i in ids], "json": not info.is_text})
        started, count = time.perf_counter(), 0
        try:
            async for event in server.events(request, lm, job):
                if isinstance(event, TokenOut):
                    count += 1
                    yield _sse({"type": "token", "id": event.id, "label": event.label, "text": event.text,
                                "prob": _prob(event.logprob),
                                "top": [{"id": i, "label": label, "prob": _prob(lp)} for i, label, lp in event.top]})
                elif isinstance(event, TextOut):
                    yield _sse({"type": "text", "text": event.text})
                elif isinstance(event, ChoiceEnd):
                    seconds = time.perf_counter() - started
                    yield _sse({"type": "end", "finish_reason": event.finish_reason, "tokens": count,
                                "seconds": round(seconds, 3), "tokens_per_second": round(count / max(seconds, 1e-9), 1)})
        except ApiError as e:
            yield _sse({"type": "error", "message": e.message, "status": e.status})

    return _stream(chunks())


def _prob(logprob: float) -> float:
    return round(math.exp(logprob), 6) if logprob > -9999 else 0.0


async def status(request: Request) -> Response:
    server: Server = request.app.state.server
    gate = server.gate
    return JSONResponse({"active": gate.active, "waiting": gate.waiting, "generated_tokens": server.generated,
                         "uptime_seconds": round(time.time() - server.started, 1)})


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=_page_headers())


async def favicon(request: Request) -> Response:
    # Browsers ask for /favicon.ico whatever the page says; an SVG answers them (a 404 was logged)
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _page_headers() -> dict[str, str]:
    # Everything the page needs comes from this server: no CDN, no inline scripts.
    return {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


# --- errors ------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _repytilian_error(request: Request, exc: RepytilianError) -> Response:
    param = exc.setting if isinstance(exc, SettingError) else None
    return ApiError(400, str(exc), param=param).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 500)
    words = {404: "no such page or endpoint", 405: "this endpoint does not take that method"}
    return ApiError(code, words.get(code, getattr(exc, "detail", "error")),
                    "invalid_request_error" if code < 500 else "server_error").response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    print(f"repytilian serve: {request.method} {request.url.path} failed: {type(exc).__name__}: {exc}",
          file=sys.stderr, flush=True)
    return ApiError(500, "the server failed on this request (its log says why); the server goes on",
                    "server_error").response()


def create_app(registry: Registry, limits: Limits | None = None) -> Starlette:
    from starlette.exceptions import HTTPException

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/v1/models", list_models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/api/models", playground_models),
        Route("/api/card", playground_card),
        Route("/api/generate", playground_generate, methods=["POST"]),
        Route("/api/status", status),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {ApiError: _api_error, RepytilianError: _repytilian_error, HTTPException: _http_error,
                Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.server = Server(registry, limits)
    return app
