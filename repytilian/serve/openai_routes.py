"""The OpenAI-compatible routes: /v1/models, /v1/completions and /v1/chat/completions.

Both generating routes share one loop (`_answer`), streamed or whole; what differs between them
is the shape of a choice, which `_Completions` and `_Chat` say.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from ..engine import END_TOKEN, STOP, Begun, Ended, Request, Token
from ..language_model import LanguageModel
from .admission import Server
from .chat import ChatError, chat_turns
from .http import ApiError, event_stream, sse, started, stream_options, whole


def finish_reason(reason: str) -> str:
    """OpenAI's words for why a choice ended: "stop" (a stop string or the end token), else "length"."""
    return "stop" if reason in (STOP, END_TOKEN) else "length"


async def list_models(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    data = [{"id": m.id, "object": "model", "created": m.created, "owned_by": "repytilian"}
            for m in server.registry.scan()]
    return JSONResponse({"object": "list", "data": data})


class _Completions:
    """/v1/completions: a choice is text; logprobs in the legacy shape (tokens, offsets)."""

    object, chunk_object = "text_completion", "text_completion"

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs

    def opening(self, i: int) -> dict[str, Any] | None:
        return None

    def piece(self, i: int, text: str, token: Token | None, offset: int) -> dict[str, Any]:
        lp = self.token_logprobs([token], offset) if token is not None and self.logprobs else None
        return {"text": text, "index": i, "logprobs": lp, "finish_reason": None}

    def end(self, i: int, reason: str) -> dict[str, Any]:
        return {"text": "", "index": i, "logprobs": None, "finish_reason": finish_reason(reason)}

    def whole(self, i: int, text: str, tokens: list[Token], reason: str) -> dict[str, Any]:
        return {"text": text, "index": i, "logprobs": self.token_logprobs(tokens) if self.logprobs else None,
                "finish_reason": finish_reason(reason)}

    @staticmethod
    def token_logprobs(tokens: list[Token], offset: int = 0) -> dict[str, Any]:
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t.text)
        return {"tokens": [t.label for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{a.label: a.logprob for a in reversed(t.top)} for t in tokens],
                "text_offset": offsets}


class _Chat:
    """/v1/chat/completions: a choice is a message (a delta when streamed), logprobs per token."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"

    def __init__(self, logprobs: bool):
        self.logprobs = logprobs

    def opening(self, i: int) -> dict[str, Any] | None:
        return {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def piece(self, i: int, text: str, token: Token | None, offset: int) -> dict[str, Any]:
        lp = {"content": [self.token_logprob(token)]} if token is not None and self.logprobs else None
        return {"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": None}

    def end(self, i: int, reason: str) -> dict[str, Any]:
        return {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(reason)}

    def whole(self, i: int, text: str, tokens: list[Token], reason: str) -> dict[str, Any]:
        lp = {"content": [self.token_logprob(t) for t in tokens]} if self.logprobs else None
        return {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                "finish_reason": finish_reason(reason)}

    @staticmethod
    def token_logprob(t: Token) -> dict[str, Any]:
        def one(label: str, lp: float) -> dict[str, Any]:
            return {"token": label, "logprob": lp, "bytes": list(label.encode("utf-8"))}

        return {**one(t.label, t.logprob), "top_logprobs": [one(a.label, a.logprob) for a in t.top]}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _answer(server: Server, http: HttpRequest, body: dict[str, Any], model_id: str, lm: LanguageModel,
                  request: Request, shape: _Completions | _Chat, prefix: str) -> Response:
    """The one loop of both routes: the engine's events as a stream of chunks, or as one answer."""
    base = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id}
    n, prompt_tokens = request.num_samples, len(request.prompt_ids)
    if not body.get("stream"):
        texts, tokens, reasons = [""] * n, [[] for _ in range(n)], ["length"] * n
        async for event in server.events(http, lm, request):
            if isinstance(event, Token):
                tokens[event.sample].append(event)
            if isinstance(event, (Token, Ended)):
                texts[event.sample] += event.text
            if isinstance(event, Ended):
                reasons[event.sample] = event.reason
        choices = [shape.whole(i, texts[i], tokens[i], reasons[i]) for i in range(n)]
        return JSONResponse({**base, "object": shape.object, "choices": choices,
                             "usage": _usage(prompt_tokens, sum(map(len, tokens)))})
    include_usage = bool(stream_options(body).get("include_usage"))
    chunk = {**base, "object": shape.chunk_object}

    async def chunks() -> AsyncIterator[str]:
        produced, offsets = 0, [0] * n
        async for event in server.events(http, lm, request):  # the first event comes once through the gate
            choice = None
            if isinstance(event, Begun):
                choice = shape.opening(event.sample)
            elif isinstance(event, Token) or (isinstance(event, Ended) and event.text):
                token = event if isinstance(event, Token) else None
                produced += token is not None
                if event.text or (token is not None and shape.logprobs):
                    choice = shape.piece(event.sample, event.text, token, offsets[event.sample])
                offsets[event.sample] += len(event.text)
            if choice is not None:
                yield sse({**chunk, "choices": [choice]})
            if isinstance(event, Ended):
                yield sse({**chunk, "choices": [shape.end(event.sample, event.reason)]})
        if include_usage:
            yield sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, produced)})
        yield "data: [DONE]\n\n"

    return event_stream(await started(chunks()))


# OpenAI's fields this server does not act on, each with the values that ask for nothing: a client
# that sends such a value (many send penalties of 0) is answered; one that asks for more is told, as
# a penalty or a logit bias silently ignored would give text the client did not ask for
_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "best_of": 1, "suffix": "",
            "echo": False, "tools": [], "functions": []}


def refuse_unsupported(body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value, neutral = body.get(name), _NEUTRAL[name]
        # True == 1 in Python: a boolean asks for nothing only where the neutral value is one
        if value is None or (value == neutral and isinstance(value, bool) == isinstance(neutral, bool)):
            continue
        raise ApiError(400, f"{name} is not supported by this server: leave it out (or send "
                            f"{json.dumps(neutral)})", param=name)


async def completions(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    body = await server.body(http)
    info, lm = await server.model(body)
    refuse_unsupported(body, ("echo", "best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias"))
    request = server.request(body, server.prompt_ids(lm, body.get("prompt", "")), 16)
    logprobs = body.get("logprobs") is not None
    if logprobs:
        request.alternatives = whole(body, "logprobs", 0, 0, server.limits.max_alternatives)
    return await _answer(server, http, body, info.id, lm, request, _Completions(logprobs), "cmpl")


async def chat_completions(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    body = await server.body(http)
    info, lm = await server.model(body)
    refuse_unsupported(body, ("presence_penalty", "frequency_penalty", "logit_bias", "tools", "functions"))
    try:
        turns = chat_turns(body.get("messages"), info)
    except ChatError as e:
        raise ApiError(400, str(e), param=e.param, code=e.code) from None
    ids, stops = server.chat_prompt_ids(lm, turns)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    request = server.request(body, ids, 256, stop=stops, max_name=name)
    logprobs = bool(body.get("logprobs"))
    if logprobs:
        request.alternatives = whole(body, "top_logprobs", 0, 0, server.limits.max_alternatives)
    return await _answer(server, http, body, info.id, lm, request, _Chat(logprobs), "chatcmpl")
