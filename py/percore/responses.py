"""Explicit responses, for when a handler needs a status, headers or media type of its own.

Plain return values need none of this: dict/list → JSON, str → text, bytes → octet-stream, None → empty.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Iterable, Mapping
from http.cookies import SimpleCookie
from urllib.parse import quote

from ._logging import log_handler_error
from ._runtime import dumps
from .exceptions import HTTPException


class Response:
    """A complete response: ``body`` is sent as given (bytes or str, encoded UTF-8)."""

    media_type: str | None = None
    #: ``BackgroundTask``/``BackgroundTasks`` run after the response is sent (``percore.background``).
    background = None

    def __init__(
        self,
        content: bytes | str = b"",
        status_code: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        media_type: str | None = None,
        background=None,
    ) -> None:
        self.status_code = status_code
        if background is not None:
            self.background = background
        if media_type is not None:
            self.media_type = media_type
        self.body = self.render(content)
        if headers is None:
            self.headers: list[tuple[str, str]] = []
        elif isinstance(headers, Mapping):
            self.headers = list(headers.items())
        else:
            self.headers = list(headers)

    def set_cookie(
        self,
        key: str,
        value: str = "",
        *,
        max_age: int | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: str | None = "lax",
    ) -> None:
        """Adds a ``Set-Cookie`` header (as Starlette/FastAPI's ``Response.set_cookie``)."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[key] = value
        morsel = cookie[key]
        if max_age is not None:
            morsel["max-age"] = max_age
        if path is not None:
            morsel["path"] = path
        if domain is not None:
            morsel["domain"] = domain
        if secure:
            morsel["secure"] = True
        if httponly:
            morsel["httponly"] = True
        if samesite is not None:
            morsel["samesite"] = samesite
        self.headers.append(("set-cookie", morsel.OutputString()))

    def delete_cookie(self, key: str, path: str = "/", domain: str | None = None) -> None:
        self.set_cookie(key, max_age=0, path=path, domain=domain)

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

    def __init__(
        self,
        content: object = b"",
        status_code: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        media_type: str | None = None,
        background: object = None,
    ) -> None:
        # Any JSON-serialisable value (the base class takes bytes or str); typed for mypy --strict users.
        super().__init__(content, status_code, headers, media_type, background)  # type: ignore[arg-type]

    def render(self, content) -> bytes:
        return dumps(content)


class RedirectResponse(Response):
    """A redirect to ``url`` (307 by default, which keeps the method and body)."""

    def __init__(self, url: str, status_code: int = 307, headers=None) -> None:
        super().__init__(b"", status_code=status_code, headers=headers)
        self.headers.append(("location", url))


class StreamingResponse(Response):
    """A body produced as it is sent: ``content`` is an async or sync iterable of bytes or str.

    Each chunk goes to the client as soon as it is produced (chunked transfer encoding unless a
    ``content-length`` header is given); when the client reads slower, the producer waits. If the client
    goes away the producer is cancelled (its ``finally`` runs); if it raises, the connection is aborted so
    the client never takes a cut body for a complete one. Sync iterables run on the loop thread: keep
    each step short.
    """

    media_type = None

    def __init__(
        self, content, status_code: int = 200, headers=None, media_type: str | None = None, background=None
    ) -> None:
        super().__init__(
            b"", status_code=status_code, headers=headers, media_type=media_type, background=background
        )
        self.body_iterator = content


class FileResponse(Response):
    """Sends the file at ``path``, read and streamed from Rust (64 KiB at a time).

    ``filename`` adds ``content-disposition: attachment`` (or ``content_disposition_type``) exactly as
    Starlette writes it: ``filename="..."`` when the name needs no quoting, else percent-encoded as
    ``filename*=utf-8''...`` (RFC 6266/5987), so quotes, ``;``, newlines and non-ASCII letters in the name
    can never add a parameter or a header. A ``content-disposition`` in ``headers`` wins.

    ``path`` is opened as given: to serve a path taken from the request, use ``safe_file``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        status_code: int = 200,
        headers=None,
        media_type: str | None = None,
        filename: str | None = None,
        content_disposition_type: str = "attachment",
        background=None,
    ) -> None:
        if media_type is None:
            media_type = mimetypes.guess_type(filename or str(path))[0] or "application/octet-stream"
        super().__init__(
            b"", status_code=status_code, headers=headers, media_type=media_type, background=background
        )
        self.path = os.fspath(path)
        self.headers.append(("content-length", str(os.stat(self.path).st_size)))
        if filename is not None and not any(k.lower() == "content-disposition" for k, _ in self.headers):
            self.headers.append(
                ("content-disposition", content_disposition(content_disposition_type, filename))
            )


def content_disposition(disposition_type: str, filename: str) -> str:
    """``attachment; filename="a.txt"``, or ``filename*=utf-8''...`` when the name needs quoting (Starlette's
    rule: whenever ``urllib.parse.quote`` changes it)."""
    quoted = quote(filename)
    if quoted != filename:
        return f"{disposition_type}; filename*=utf-8''{quoted}"
    return f'{disposition_type}; filename="{filename}"'


def safe_file(
    directory: str | os.PathLike,
    path: str,
    status_code: int = 200,
    headers=None,
    media_type: str | None = None,
    filename: str | None = None,
    content_disposition_type: str = "attachment",
) -> FileResponse:
    """A ``FileResponse`` for ``path`` (e.g. a ``{*path}`` capture) inside ``directory``, or
    ``HTTPException(404)`` if it is not a regular file there.

    Path captures arrive percent-decoded with ``..`` kept (``/files/..%2F..%2Fetc%2Fpasswd`` captures
    ``../../etc/passwd``), so ``FileResponse(directory + path)`` would serve any file the process can read.
    Refused with 404 (the same answer as a missing file, so nothing is revealed): empty paths, absolute
    paths, any ``..`` segment, NUL bytes, and anything that resolves outside ``directory`` once symlinks
    are followed (a symlink inside pointing inside is served). Directories are 404 too.
    """
    root = os.path.realpath(directory)
    segments = path.replace(os.altsep, os.sep) if os.altsep else path
    if not path or "\x00" in path or os.path.isabs(segments) or ".." in segments.split(os.sep):
        raise HTTPException(404)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or not os.path.isfile(full):
        raise HTTPException(404)
    if media_type is None:
        media_type = mimetypes.guess_type(filename or path)[0]
    try:
        return FileResponse(
            full,
            status_code=status_code,
            headers=headers,
            media_type=media_type,
            filename=filename,
            content_disposition_type=content_disposition_type,
        )
    except OSError:  # gone or unreadable since the check
        raise HTTPException(404) from None


async def _pump(iterator, send) -> None:
    """Runs on the loop as an asyncio task: feeds a StreamingResponse's chunks to Rust."""
    try:
        if hasattr(iterator, "__aiter__"):
            async for chunk in iterator:
                await send(chunk)
        else:
            for chunk in iterator:
                await send(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        send.close()  # the client is gone; nothing more to say
    except BaseException as error:
        log_handler_error("StreamingResponse body", error)
        send.abort(f"{type(error).__name__}: {error}")
    else:
        send.close()
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


def as_response(value, status_code: int = 200) -> Response:
    """A handler's plain return value as the ``Response`` object Rust would have sent."""
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return PlainTextResponse(value, status_code=status_code)
    if isinstance(value, bytes | bytearray):
        return Response(bytes(value), status_code=status_code, media_type="application/octet-stream")
    if value is None:
        return Response(b"", status_code=status_code)
    return JSONResponse(value, status_code=status_code)


__all__ = [
    "FileResponse",
    "HTMLResponse",
    "JSONResponse",
    "PlainTextResponse",
    "RedirectResponse",
    "Response",
    "StreamingResponse",
    "as_response",
    "content_disposition",
    "safe_file",
]
