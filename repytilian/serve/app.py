"""The ASGI app: the routes of the playground (playground_routes.py) and of the OpenAI-compatible
API (openai_routes.py) over one `Server` (admission.py), and the error handlers that answer
every failure in OpenAI's JSON shape ({"error": {"message", "type", "param", "code"}}), never
as a traceback."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import RepytilianError, SettingError
from . import inspect_routes, openai_routes, playground_routes
from .admission import Server
from .guard import Guard, GuardMiddleware
from .http import ApiError, log
from .limits import Limits
from .registry import Registry


async def _api_error(http: HttpRequest, exc: ApiError) -> Response:
    return exc.response()


async def _repytilian_error(http: HttpRequest, exc: RepytilianError) -> Response:
    param = exc.setting if isinstance(exc, SettingError) else None
    return ApiError(400, str(exc), param=param).response()


async def _http_error(http: HttpRequest, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 500)
    words = {404: "no such page or endpoint", 405: "this endpoint does not take that method"}
    response = ApiError(code, words.get(code, getattr(exc, "detail", "error")),
                        "invalid_request_error" if code < 500 else "server_error").response()
    response.headers.update(getattr(exc, "headers", None) or {})  # 405's Allow
    return response


async def _unexpected(http: HttpRequest, exc: Exception) -> Response:
    log(f"{http.method} {http.url.path} failed: {type(exc).__name__}: {exc}")
    return ApiError(500, "the server failed on this request (its log says why); the server goes on",
                    "server_error").response()


def create_app(registry: Registry, limits: Limits | None = None, guard: Guard | None = None) -> Starlette:
    """The app for `registry`'s models. `guard` says who may talk to it (guard.py); by default,
    as for a server bound to this machine: requests addressed to localhost only, no key."""
    from starlette.exceptions import HTTPException

    routes = [
        Route("/", playground_routes.index),
        Route("/favicon.ico", playground_routes.favicon),
        Route("/v1/models", openai_routes.list_models),
        Route("/v1/completions", openai_routes.completions, methods=["POST"]),
        Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
        Route("/api/models", playground_routes.models),
        Route("/api/card", playground_routes.card),
        Route("/api/generate", playground_routes.generate, methods=["POST"]),
        Route("/api/status", playground_routes.status),
        Route("/api/inspect", inspect_routes.inspect, methods=["POST"]),
        Mount("/static", StaticFiles(directory=playground_routes.STATIC), name="static"),
    ]
    handlers = {ApiError: _api_error, RepytilianError: _repytilian_error, HTTPException: _http_error,
                Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.server = Server(registry, limits)
    app.add_middleware(GuardMiddleware, guard=guard or Guard())
    return app
