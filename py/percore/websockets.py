"""``percore.WebSocket``: the object a ``@api.websocket(path)`` handler talks to its client through.

Starlette's (and so FastAPI's) ``WebSocket`` API and semantics: ``accept(subprotocol=, headers=)``,
``receive_text/bytes/json``, ``send_text/bytes/json``, ``iter_text/bytes/json``, ``close(code, reason)``,
and ``WebSocketDisconnect(code, reason)`` raised by a receive once the client is gone (``iter_*`` end
instead). Underneath is the server's ASGI WebSocket exchange (``runtime/src/python/websocket.rs``): the
same frame pump, limits and bounded queues as an ASGI app's WebSocket.
"""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

Message = dict[str, Any]


class WebSocketState(enum.Enum):
    CONNECTING = 0
    CONNECTED = 1
    DISCONNECTED = 2


class WebSocketDisconnect(Exception):
    """The client closed the connection (or it broke: 1006); ``code`` is its close code."""

    def __init__(self, code: int = 1000, reason: str | None = None) -> None:
        super().__init__(code, reason or "")
        self.code = code
        self.reason = reason or ""

    def __repr__(self) -> str:
        return f"WebSocketDisconnect(code={self.code!r}, reason={self.reason!r})"


class WebSocketException(Exception):
    """Raise in a WebSocket handler (or a dependency) to close the connection with ``code`` and
    ``reason``; before ``accept()`` the handshake is refused (403), as under Starlette and uvicorn."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(code, reason or "")
        self.code = code
        self.reason = reason or ""


class Address(NamedTuple):
    host: str
    port: int


class URL(str):
    """The WebSocket's URL (``ws://host/path?query``) as a ``str``, with Starlette's URL parts."""

    @property
    def scheme(self) -> str:
        return urlsplit(self).scheme

    @property
    def netloc(self) -> str:
        return urlsplit(self).netloc

    @property
    def hostname(self) -> str | None:
        return urlsplit(self).hostname

    @property
    def port(self) -> int | None:
        return urlsplit(self).port

    @property
    def path(self) -> str:
        return urlsplit(self).path

    @property
    def query(self) -> str:
        return urlsplit(self).query


class WebSocket:
    """One WebSocket connection, given to the handler's ``websocket: WebSocket`` parameter.

    ``scope`` is the ASGI ``websocket`` scope the server built for the handshake (``path_params``
    included); ``url``, ``headers``, ``query_params``, ``path_params``, ``cookies``, ``client`` and
    ``state`` are read from it."""

    def __init__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.client_state = WebSocketState.CONNECTING
        self.application_state = WebSocketState.CONNECTING
        self._headers: dict[str, str] | None = None

    # The handshake request.

    @property
    def url(self) -> URL:
        scope = self.scope
        server = scope.get("server")
        host = self.headers.get("host")
        if host is None and server:
            host = f"{server[0]}:{server[1]}"
        query = scope.get("query_string", b"").decode("latin-1")
        return URL(f"{scope['scheme']}://{host or ''}{scope['path']}{'?' + query if query else ''}")

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ", " (as ``percore.Request.headers``)."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.scope["headers"]:
                key, text = name.decode("latin-1"), value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return self._headers

    @property
    def query_params(self) -> dict[str, str]:
        """The query string's parameters (a repeated key: the last value, as Starlette's ``[]``)."""
        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))

    @property
    def path_params(self) -> dict[str, str]:
        return self.scope.get("path_params", {})

    @property
    def cookies(self) -> dict[str, str]:
        cookies: dict[str, str] = {}
        for chunk in self.headers.get("cookie", "").split(";"):
            name, _, value = chunk.partition("=")
            if name.strip():
                cookies.setdefault(name.strip(), value.strip())
        return cookies

    @property
    def client(self) -> Address | None:
        client = self.scope.get("client")
        return Address(*client) if client else None

    @property
    def state(self) -> dict[str, Any]:
        """A shallow copy of the loop's state: what its ``on_loop_start`` hooks put there."""
        return self.scope.setdefault("state", {})

    @property
    def subprotocols(self) -> list[str]:
        """What the client offered in ``Sec-WebSocket-Protocol``, in its order."""
        return self.scope.get("subprotocols", [])

    # Messages.

    async def receive(self) -> Message:
        """The next ASGI message (``websocket.connect`` first, then ``websocket.receive`` or
        ``websocket.disconnect``)."""
        if self.client_state is WebSocketState.CONNECTING:
            message = await self._receive()
            if message["type"] != "websocket.connect":
                raise RuntimeError(f'Expected ASGI message "websocket.connect", but got {message["type"]!r}')
            self.client_state = WebSocketState.CONNECTED
            return message
        if self.client_state is WebSocketState.CONNECTED:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self.client_state = WebSocketState.DISCONNECTED
            return message
        raise RuntimeError('Cannot call "receive" once a disconnect message has been received.')

    async def send(self, message: Message) -> None:
        """Sends an ASGI message; a send on a connection that is gone raises ``WebSocketDisconnect``
        (1006)."""
        kind = message["type"]
        if self.application_state is WebSocketState.CONNECTING:
            if kind not in ("websocket.accept", "websocket.close"):
                raise RuntimeError(
                    f'Expected ASGI message "websocket.accept" or "websocket.close", but got {kind!r}'
                )
            self.application_state = (
                WebSocketState.DISCONNECTED if kind == "websocket.close" else WebSocketState.CONNECTED
            )
            await self._send(message)
        elif self.application_state is WebSocketState.CONNECTED:
            if kind not in ("websocket.send", "websocket.close"):
                raise RuntimeError(
                    f'Expected ASGI message "websocket.send" or "websocket.close", but got {kind!r}'
                )
            if kind == "websocket.close":
                self.application_state = WebSocketState.DISCONNECTED
            try:
                await self._send(message)
            except OSError:
                self.application_state = WebSocketState.DISCONNECTED
                raise WebSocketDisconnect(1006) from None
        else:
            raise RuntimeError('Cannot call "send" once a close message has been sent.')

    async def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Completes the handshake (101), with the chosen ``subprotocol`` and extra ``headers``."""
        if self.client_state is WebSocketState.CONNECTING:
            await self.receive()
        await self.send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": list(headers or [])}
        )

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Closes with ``code`` and ``reason``; before ``accept()`` it refuses the handshake (403)."""
        await self.send({"type": "websocket.close", "code": code, "reason": reason or ""})

    def _connected(self) -> None:
        if self.application_state is not WebSocketState.CONNECTED:
            raise RuntimeError('WebSocket is not connected. Need to call "accept" first.')

    async def _data(self) -> Message:
        self._connected()
        message = await self.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message["code"], message.get("reason"))
        return message

    async def receive_text(self) -> str:
        """The next text message; ``WebSocketDisconnect`` once the client is gone. A binary message
        raises ``KeyError``, as in Starlette."""
        return (await self._data())["text"]

    async def receive_bytes(self) -> bytes:
        return (await self._data())["bytes"]

    async def receive_json(self, mode: str = "text") -> Any:
        """The next message parsed as JSON (``mode="binary"``: from a binary message)."""
        if mode not in ("text", "binary"):
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        message = await self._data()
        return json.loads(message["text"] if mode == "text" else message["bytes"].decode("utf-8"))

    async def iter_text(self) -> AsyncIterator[str]:
        """Text messages until the client disconnects (then the loop ends, without raising)."""
        try:
            while True:
                yield await self.receive_text()
        except WebSocketDisconnect:
            pass

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self.receive_bytes()
        except WebSocketDisconnect:
            pass

    async def iter_json(self) -> AsyncIterator[Any]:
        try:
            while True:
                yield await self.receive_json()
        except WebSocketDisconnect:
            pass

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.send", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        if mode not in ("text", "binary"):
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if mode == "text":
            await self.send({"type": "websocket.send", "text": text})
        else:
            await self.send({"type": "websocket.send", "bytes": text.encode("utf-8")})


__all__ = ["URL", "Address", "WebSocket", "WebSocketDisconnect", "WebSocketException", "WebSocketState"]
