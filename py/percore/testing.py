"""``TestClient``: exercise an app through the real server — Rust router, parameter binding,
serialisation, the loop's asyncio — in-process, over a loopback socket.

    from percore.testing import TestClient

    def test_hello():
        with TestClient(api) as client:
            assert client.get("/json").json() == {"message": "Hello, World!"}
            with client.websocket_connect("/ws") as ws:
                ws.send_text("hi")
                assert ws.receive_text() == "hi"
"""

from __future__ import annotations

import base64
import http.client
import json as json_module
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .server import Server, ServerConfig
from .websockets import WebSocketDisconnect


class TestResponse:
    __test__ = False  # not a pytest test class

    def __init__(self, status_code: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.status_code = status_code
        self.headers = {name.lower(): value for name, value in headers}
        self.header_list = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json_module.loads(self.content)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status_code}>"


class TestClient:
    """Serves ``app`` on one loop on a free loopback port while the client is open."""

    __test__ = False

    def __init__(self, app: Any, *, loops: str = "1", routing: str = "local", timeout: float = 30) -> None:
        self._server = Server(app, ServerConfig(port=0, loops=loops, routing=routing))
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> TestClient:
        self._server.start()
        self._connection = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=self._timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self._server.stop()
            self._server.join()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> TestResponse:
        if self._connection is None:
            raise RuntimeError("use the TestClient in a `with` block (or call __enter__)")
        headers = dict(headers or {})
        body: bytes | None = None
        if json is not None:
            body = json_module.dumps(json).encode()
            headers.setdefault("Content-Type", "application/json")
        elif data is not None or files is not None:
            from ._forms import encode  # a form, as httpx encodes one (multipart with files)

            body, content_type = encode(data, files)
            headers.setdefault("Content-Type", content_type)
        elif content is not None:
            body = content.encode() if isinstance(content, str) else content
        if params:
            from urllib.parse import urlencode

            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        self._connection.request(method, path, body=body, headers=headers)
        reply = self._connection.getresponse()
        return TestResponse(reply.status, reply.getheaders(), reply.read())

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("DELETE", path, **kwargs)

    def websocket_connect(
        self,
        path: str,
        subprotocols: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> WebSocketTestSession:
        """Opens a WebSocket to ``path`` (its own connection) and completes the handshake; use it in a
        ``with`` block, as Starlette's. A refused handshake raises ``WebSocketDenied`` (a
        ``WebSocketDisconnect``, code 1008, with the HTTP answer)."""
        if self._connection is None:
            raise RuntimeError("use the TestClient in a `with` block (or call __enter__)")
        return WebSocketTestSession(self._server.port, path, subprotocols, headers, self._timeout)


class WebSocketDenied(WebSocketDisconnect):
    """The server answered the handshake with ``status_code`` instead of 101 (the app closed before
    accepting: 403; its parameters did not validate: 403 with the 422 ``detail``; an ``HTTPException``
    before accepting: its status and detail; it failed: 500)."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        super().__init__(1008, f"handshake answered {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.content = content


_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketTestSession:
    """A WebSocket client over a real socket, with the methods of Starlette's test session."""

    __test__ = False

    def __init__(
        self,
        port: int,
        path: str,
        subprotocols: Sequence[str] | None,
        headers: Mapping[str, str] | None,
        timeout: float,
    ) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self._closed = False
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        self.extra_headers = [tuple(line.split(":", 1)) for line in header_lines]
        self.headers = {name.strip().lower(): value.strip() for name, value in self.extra_headers}
        self.accepted_subprotocol = self.headers.get("sec-websocket-protocol")
        if status != 101:
            length = int(self.headers.get("content-length", "0"))
            while len(self._buffer) < length:
                self._fill()
            self._socket.close()
            self._closed = True
            raise WebSocketDenied(status, self.headers, self._buffer[:length])

    def __enter__(self) -> WebSocketTestSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            try:
                self.close(1000)
            except OSError:
                pass
        self._socket.close()

    def _fill(self) -> None:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise WebSocketDisconnect(1006)
        self._buffer += chunk

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        self._socket.sendall(header + mask + masked)

    def send(self, message: Mapping[str, Any]) -> None:
        """An ASGI-style message: ``{"type": "websocket.receive", "text" | "bytes": ...}`` or
        ``{"type": "websocket.disconnect", "code": ...}``."""
        if message["type"] == "websocket.disconnect":
            self.close(message.get("code", 1000), message.get("reason"))
        elif message.get("text") is not None:
            self.send_text(message["text"])
        else:
            self.send_bytes(message["bytes"])

    def send_text(self, data: str) -> None:
        self._send_frame(_TEXT, data.encode())

    def send_bytes(self, data: bytes) -> None:
        self._send_frame(_BINARY, bytes(data))

    def send_json(self, data: Any, mode: str = "text") -> None:
        text = json_module.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if mode == "text":
            self.send_text(text)
        else:
            self.send_bytes(text.encode())

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Sends a close frame (the server's answer is not awaited)."""
        if not self._closed:
            self._closed = True
            self._send_frame(_CLOSE, struct.pack("!H", code) + (reason or "").encode())

    def receive(self) -> dict[str, Any]:
        """The next message from the server as an ASGI-style dict: ``websocket.send`` with ``text`` or
        ``bytes``, or ``websocket.close`` with its ``code`` and ``reason``. Pings are answered."""
        opcode, payload = None, b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            data = self._read(length)
            kind = first & 0x0F
            if kind == _PING:
                self._send_frame(_PONG, data)
                continue
            if kind == _PONG:
                continue
            if kind == _CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                return {"type": "websocket.close", "code": code, "reason": data[2:].decode()}
            opcode = opcode or kind
            payload += data
            if first & 0x80:
                break
        if opcode == _TEXT:
            return {"type": "websocket.send", "text": payload.decode()}
        return {"type": "websocket.send", "bytes": payload}

    def _data(self) -> dict[str, Any]:
        message = self.receive()
        if message["type"] == "websocket.close":
            self._closed = True
            raise WebSocketDisconnect(message["code"], message["reason"])
        return message

    def receive_text(self) -> str:
        """The next text message; a close from the server raises ``WebSocketDisconnect`` with its code."""
        return self._data()["text"]

    def receive_bytes(self) -> bytes:
        return self._data()["bytes"]

    def receive_json(self, mode: str = "text") -> Any:
        message = self._data()
        return json_module.loads(message["text"] if mode == "text" else message["bytes"].decode())
