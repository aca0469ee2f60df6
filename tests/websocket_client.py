"""A minimal RFC 6455 client for the tests: handshake, masked frames out, frames in."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Handshake:
    def __init__(self, status: int, headers: dict[str, str], sock: socket.socket, rest: bytes) -> None:
        self.status = status
        self.headers = headers
        self.sock = sock
        self.buffer = rest

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        # XOR as one big integer: a byte-by-byte loop takes seconds per MiB.
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self.send(TEXT, text.encode())

    def send_bytes(self, data: bytes) -> None:
        self.send(BINARY, data)

    def close(self, code: int = 1000) -> None:
        self.send(CLOSE, struct.pack("!H", code))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def receive_close_code(self) -> int:
        opcode, payload = self.receive()
        assert opcode == CLOSE, opcode
        return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def connect(
    port: int,
    path: str,
    subprotocols: tuple[str, ...] = (),
    timeout: float = 10,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Handshake:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls is not None:  # wss://
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Handshake(int(status_line.split()[1]), headers, sock, rest)
