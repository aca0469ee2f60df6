"""Explicit responses, for when a handler needs a status, headers or media type of its own.

Plain return values need none of this: dict/list → JSON, str → text, bytes → octet-stream, None → empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._runtime import dumps


class Response:
    """A complete response: ``body`` is sent as given (bytes or str, encoded UTF-8)."""

    media_type: str | None = None

    def __init__(
        self,
        content: bytes | str = b"",
        status_code: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.body = self.render(content)
        if headers is None:
            self.headers: list[tuple[str, str]] = []
        elif isinstance(headers, Mapping):
            self.headers = list(headers.items())
        else:
            self.headers = list(headers)

    def render(self, content) -> bytes:
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode()
        raise TypeError(f"{type(self).__name__} content must be bytes or str, not {type(content).__name__}")


class PlainTextResponse(Response):
    media_type = "text/plain; charset=utf-8"


class HTMLResponse(Response):
    media_type = "text/html; charset=utf-8"


class JSONResponse(Response):
    """Serialised in Rust (sonic-rs), exactly as a returned dict or list would be."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return dumps(content)


__all__ = ["HTMLResponse", "JSONResponse", "PlainTextResponse", "Response"]
