"""The playground: its page (/), its static files, and its own API (/api/...): the models with
their cards and live training metrics, and generation with each token's probability and its
likeliest alternatives, as server-sent events."""
from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response

from ..engine import NO_PROBABILITY, Ended, Token, token_label
from ..store.live import current_metrics, live_path
from .admission import Server
from .http import ApiError, event_stream, sse
from .openai_routes import finish_reason
from .registry import ModelNotFound

STATIC = Path(__file__).parent / "static"


async def models(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    found = [{**m.to_dict(), "training": live_path(m.path).is_file()} for m in server.registry.scan(training=True)]
    return JSONResponse({"models": found, "limits": {"max_tokens": server.limits.max_tokens}})


async def card(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    try:
        info = server.registry.find(http.query_params.get("model"), training=True)
    except ModelNotFound as e:
        raise ApiError(404, str(e), param="model", code="model_not_found") from None
    card_file = server.registry.readable(info.path / "README.md")  # None where it leads out of the models folder
    text = card_file.read_text(encoding="utf-8", errors="replace") if card_file else ""
    metrics, live = current_metrics(info.path, readable=server.registry.readable)
    return JSONResponse({**info.to_dict(), "card": text, "metrics": metrics, "training": live})


async def generate(http: HttpRequest) -> Response:
    """Server-sent events: the prompt's tokens, then each new token with its probability and its
    likeliest alternatives, then a summary."""
    server: Server = http.app.state.server
    body = await server.body(http)
    info, lm = await server.model(body)
    source = body.get("prompt_ids") if body.get("prompt_ids") is not None else body.get("prompt", "")
    ids = server.prompt_ids(lm, source)
    request = server.request({**body, "n": 1}, ids, 200)
    request.alternatives = server.limits.max_alternatives

    async def chunks() -> AsyncIterator[str]:
        yield sse({"type": "start", "model": info.id, "prompt_ids": ids,
                   "prompt_labels": [token_label(lm.tokenizer, i) for i in ids], "json": not info.is_text})
        began, count = time.perf_counter(), 0
        try:
            async for event in server.events(http, lm, request):
                if isinstance(event, Token):
                    count += 1
                    yield sse({"type": "token", "id": event.id, "label": event.label, "text": event.text,
                               "prob": _prob(event.logprob),
                               "top": [{"id": a.id, "label": a.label, "prob": _prob(a.logprob)} for a in event.top]})
                elif isinstance(event, Ended):
                    if event.text:
                        yield sse({"type": "text", "text": event.text})
                    seconds = time.perf_counter() - began
                    yield sse({"type": "end", "finish_reason": finish_reason(event.reason), "tokens": count,
                               "seconds": round(seconds, 3), "tokens_per_second": round(count / max(seconds, 1e-9), 1)})
        except ApiError as e:
            yield sse({"type": "error", "message": e.message, "status": e.status})

    return event_stream(chunks())


def _prob(logprob: float) -> float:
    return round(math.exp(logprob), 6) if logprob > NO_PROBABILITY else 0.0


async def status(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    gate = server.gate
    return JSONResponse({"active": gate.active, "waiting": gate.waiting, "generated_tokens": server.generated,
                         "most_decoding_together": server.most_rows(),
                         "uptime_seconds": round(time.time() - server.started, 1)})


async def index(http: HttpRequest) -> Response:
    return FileResponse(STATIC / "index.html", headers=_page_headers())


async def favicon(http: HttpRequest) -> Response:
    # Browsers ask for /favicon.ico whatever the page says; an SVG answers them (a 404 was logged)
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _page_headers() -> dict[str, str]:
    # Everything the page needs comes from this server: no CDN, no inline scripts.
    return {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
