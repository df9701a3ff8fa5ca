"""What every route shares of HTTP: errors in OpenAI's JSON shape, request fields checked and
named (`param` is the JSON field, as OpenAI's errors name it), and server-sent event streams."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from ..errors import RepytilianError, SettingError
from ..stops import stop_list

RETRY_AFTER_SECONDS = 1  # what a 429 or 503 asks a client to wait before trying again
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # stop strings a request may give, and their length (as OpenAI's 4)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=retry)


def number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}", param=name)
    return float(value)


def whole(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}", param=name)
    return value


def stop_strings(value: Any) -> list[str]:
    """A request's `stop` as the library reads one (stops.stop_list), within the server's limits."""
    try:
        stops = stop_list(value)
    except SettingError:
        stops = None
    if stops is None or isinstance(value, list) and len(value) > MAX_STOPS:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"a stop string may have at most {MAX_STOP_CHARS} characters", param="stop")
    return stops


def stream_options(body: dict) -> dict:
    """`stream_options`, an object or absent."""
    value = body.get("stream_options")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "stream_options must be an object, e.g. {\"include_usage\": true}", param="stream_options")
    return value


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


LOG = logging.getLogger("repytilian.serve")


def log(text: str) -> None:
    """The server's own log line, for the person who started it (`repytilian serve` shows the
    logger "repytilian.serve" on stderr; the library itself prints nothing)."""
    LOG.error(text)


def event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except ApiError as e:  # once the answer has begun, an error can only be one more event
            yield sse(e.body())
        except RepytilianError as e:
            yield sse(ApiError(400, str(e)).body())
        except Exception as e:  # noqa: BLE001 - logged; the client gets a message, the server goes on
            log(f"a stream failed: {type(e).__name__}: {e}")
            yield sse(ApiError(500, "generation failed on the server", "server_error").body())

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def started(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Start the generator before answering, so that a 429 or a bad model is a status, not a stream."""
    first = await chunks.__anext__()

    async def joined() -> AsyncIterator[str]:
        yield first
        async for chunk in chunks:
            yield chunk

    return joined()
