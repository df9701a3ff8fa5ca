"""Who may talk to the server, checked before any route runs (an ASGI middleware).

- **Local means local**: bound to a loopback address, the server answers only requests whose Host
  is a loopback name or address (any port), or one of `allowed_hosts`; a web page whose DNS name
  was rebound to 127.0.0.1 sends its own name as Host and is refused (403).
- **Other sites' pages**: a request whose Origin is present and is not the server's own origin is
  refused (403) unless `cors_origins` allows it; then it gets CORS headers, and its preflight
  (OPTIONS) is answered.
- **JSON only**: API POSTs need `Content-Type: application/json` (415 otherwise), so a page
  cannot send a "simple" text/plain request that skips the browser's preflight.
- **An optional key**: with `api_key`, every /v1 and /api request needs `Authorization: Bearer KEY`
  (compared in constant time; 401 otherwise). The page and its files need none: the page asks for
  the key and sends it.

Every refusal is one JSON error in OpenAI's shape. Knows HTTP; knows nothing of models.
"""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})
API_PREFIXES = ("/v1/", "/api/")
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"


def is_loopback(host: str) -> bool:
    """A loopback name or address (127.0.0.0/8, ::1, localhost), brackets of IPv6 allowed."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class Guard:
    """What the server accepts. `local_only`: it is bound to a loopback address."""

    local_only: bool = True
    allowed_hosts: Iterable[str] = ()
    cors_origins: Iterable[str] = ()
    api_key: str | None = None
    _hosts: frozenset[str] = field(init=False, repr=False)
    _origins: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._hosts = frozenset(h.strip().lower() for h in self.allowed_hosts)
        self._origins = frozenset(o.strip().rstrip("/").lower() for o in self.cors_origins)

    def host_allowed(self, headers: Headers) -> bool:
        name = host_name(headers.get("host", ""))
        return not self.local_only or is_loopback(name) or name in self._hosts

    def cross_origin(self, scope: dict[str, Any], headers: Headers) -> str | None:
        """The Origin of a request from another site's page (None: no Origin, or this server's own)."""
        origin = headers.get("origin")
        if origin is None:
            return None
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        return None if origin.rstrip("/").lower() == own else origin

    def origin_allowed(self, origin: str) -> bool:
        return origin.rstrip("/").lower() in self._origins

    def key_given(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key.encode())


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    kind = "invalid_request_error" if status != 401 else "authentication_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


class GuardMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]], guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = self.guard.cross_origin(scope, headers)
        refusal = self.refusal(scope, headers, origin)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if origin is None:
            await self.app(scope, receive, send)
            return
        cors = {"access-control-allow-origin": origin, "vary": "Origin"}
        if scope["method"] == "OPTIONS":  # the preflight of an allowed origin
            await Response(status_code=204, headers={**cors, "access-control-allow-methods": CORS_METHODS,
                                                     "access-control-allow-headers": CORS_HEADERS,
                                                     "access-control-max-age": "600"})(scope, receive, send)
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in cors.items()]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def refusal(self, scope: dict[str, Any], headers: Headers, origin: str | None) -> Response | None:
        guard, method, path = self.guard, scope["method"], scope["path"]
        if not guard.host_allowed(headers):
            return _error(403, f"this server answers requests addressed to this machine only, not to "
                               f"{host_name(headers.get('host', '')) or 'no host'!r} (its --allow-host adds names)",
                          "host_not_allowed")
        if origin is not None and method != "GET" and not guard.origin_allowed(origin):
            return _error(403, f"requests from pages of {origin} are not accepted (its --cors-origin allows an "
                               "origin)", "origin_not_allowed")
        api = path.startswith(API_PREFIXES)
        if api and guard.api_key and method != "OPTIONS" and not guard.key_given(headers):
            return _error(401, "this server needs an API key: send the header Authorization: Bearer KEY",
                          "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        if api and method == "POST":
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return _error(415, f"the request body must be JSON (Content-Type: application/json), not "
                                   f"{kind or 'unsaid'}", "unsupported_media_type")
        return None
