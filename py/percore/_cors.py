"""CORS for a percore app (``App.add_cors``): preflights answered and response headers added by a
middleware layer around every route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .responses import PlainTextResponse, Response


@dataclass(frozen=True)
class Cors:
    """The policy ``App.add_cors`` configured; ``middleware`` applies it."""

    origins: list[str]
    methods: list[str]
    headers: list[str]
    credentials: bool
    max_age: int

    def allowed_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if "*" in self.origins:
            return origin if self.credentials else "*"
        return origin if origin in self.origins else None

    async def middleware(self, request: Any, call_next: Callable[[Any], Awaitable[Response]]) -> Response:
        origin = request.headers.get("origin")
        allowed = self.allowed_origin(origin)
        preflight = request.method == "OPTIONS" and "access-control-request-method" in request.headers
        if preflight:
            if allowed is None:
                return PlainTextResponse("Disallowed CORS origin", status_code=400)
            requested = request.headers.get("access-control-request-headers", "")
            response = Response(b"", status_code=200)
            response.headers += [
                ("access-control-allow-origin", allowed),
                ("access-control-allow-methods", ", ".join(self.methods)),
                (
                    "access-control-allow-headers",
                    requested if "*" in self.headers else ", ".join(self.headers),
                ),
                ("access-control-max-age", str(self.max_age)),
                ("vary", "Origin"),
            ]
        else:
            response = await call_next(request)
            if allowed is not None:
                # A new list: the handler may return the same Response object to every request.
                response.headers = [
                    *response.headers,
                    ("access-control-allow-origin", allowed),
                    ("vary", "Origin"),
                ]
        if allowed is not None and self.credentials:
            response.headers = [*response.headers, ("access-control-allow-credentials", "true")]
        return response
