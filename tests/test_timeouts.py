"""Deadlines after the request head (runtime/src/deadline.rs, docs/limits.md), over real sockets: a request
body that stops arriving gets 408 and its connection closes (`--body-timeout`); a client that stops reading
its responses is disconnected (`--send-timeout`); over TLS too; memory held by stalled bodies is released;
everyone else is served throughout."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from .conftest import assert_one_clear_line, free_port, run_cli
from .test_metrics import scrape, total, wait_for
from .test_tls import HTTPS, client_context, https_json

NATIVE = "tests.apps.runtime_app:api"
ASGI = "tests.apps.timeout_apps:app"
TIMEOUTS = ("--body-timeout", "1", "--send-timeout", "1")


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close). A server that
    never closes fails the test with the socket's timeout."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):  # a reset, or TLS ended without close_notify
            return received
        if not chunk:
            return received
        received += chunk


def send_then_stall(sock: socket.socket, head: bytes, pieces: list[bytes]) -> None:
    """The head, then the body pieces trickled 0.3 s apart, then nothing. (On a machine slow enough for the
    server to give up during the trickle, the later pieces find the connection closed.)"""
    sock.sendall(head)
    for piece in pieces:
        time.sleep(0.3)
        try:
            sock.sendall(piece)
        except OSError:
            return


def assert_408_and_closed(reply: bytes) -> None:
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 408"), reply[:200]
    assert b"\r\nconnection: close" in head, head


def events(port: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return json.loads(read_to_end(sock).split(b"\r\n\r\n", 1)[1])


def served(server, transport: str = "plain") -> bool:
    """Another client is answered meanwhile."""
    path = "/where" if NATIVE in server.command else "/events"
    if transport == "tls":
        return https_json(server.port, path) is not None
    if transport == "unix":
        with connect(server, transport) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            return read_to_end(sock).startswith(b"HTTP/1.1 200")
    return server.get(path).status == 200


@pytest.mark.parametrize(
    ("app", "path", "framing"),
    [
        (NATIVE, "/upload", "length"),  # read before the handler runs
        (ASGI, "/upload", "length"),  # a small body: read before the app runs
        (ASGI, "/upload", "big-length"),  # handed to the app still arriving
        (ASGI, "/upload", "chunked"),
    ],
    ids=["native", "asgi-small", "asgi-streamed", "asgi-chunked"],
)
def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(serve, app, path, framing):
    server = serve(app, "--loops", "1", *TIMEOUTS)
    if framing == "chunked":
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        pieces = [b"4\r\nabcd\r\n", b"2\r\nef\r\n", b"1\r\n"]  # the last chunk's data never comes
    else:
        length = 1000 if framing == "length" else 200_000
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()
        pieces = [b"a" * (100_000 if framing == "big-length" else 1), b"b", b"c"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        send_then_stall(sock, head, pieces)
        assert served(server)
        assert_408_and_closed(read_to_end(sock))
    assert served(server)
    if app == ASGI and framing != "length":
        # The app was reading the body: receive() told it the client is gone.
        assert wait_for(lambda: events(server.port) == ["upload disconnect"])


def test_a_body_that_stops_after_the_response_started_closes_the_connection(serve):
    # The app streams its response before reading the body: too late for a 408, so the response is cut off
    # (no final chunk: the client cannot take it for complete) and the connection closes.
    server = serve(ASGI, "--loops", "1", *TIMEOUTS)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        send_then_stall(
            sock,
            b"POST /answer-then-read HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n",
            [b"x" * 100_000],
        )
        reply = read_to_end(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b"started;" in reply
    assert not reply.endswith(b"0\r\n\r\n"), reply[-100:]
    assert wait_for(lambda: events(server.port) == ["answer-then-read disconnect"])
    assert served(server)


def test_a_slow_body_that_keeps_arriving_is_read(serve):
    # The deadline is for a body that stops, not a slow one (nginx's client_body_timeout): each byte restarts it.
    server = serve(NATIVE, "--loops", "1", "--body-timeout", "5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
        for byte in b"12345678":
            time.sleep(0.2)
            sock.sendall(bytes([byte]))
        reply = read_to_end(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b'{"received":8}')


def connections(metrics_port: int) -> tuple[float, float]:
    """(connections accepted so far, connections open now)."""
    samples = scrape(metrics_port)
    return total(samples, "percore_connections_total"), total(samples, "percore_open_connections")


def settled(metrics_port: int) -> float:
    """Connections accepted so far, once none is open (the fixture's readiness probe closed)."""
    return wait_for(lambda: (counts := connections(metrics_port))[1] == 0 and counts[0])


def connect(server, transport: str) -> socket.socket:
    """A connection to `server` over TCP, TLS or its Unix socket."""
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(str(server.uds))
        return sock
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if transport == "tls":
        return client_context().wrap_socket(sock, server_hostname="localhost")
    return sock


@pytest.mark.parametrize("transport", ["plain", "tls", "unix"])
def test_a_client_that_pipelines_and_never_reads_is_disconnected(serve, tmp_path, transport):
    metrics_port = free_port()
    server = serve(
        ASGI,
        "--loops",
        "1",
        *TIMEOUTS,
        "--metrics-port",
        str(metrics_port),
        *(HTTPS if transport == "tls" else ()),
        uds=tmp_path / "percore.sock" if transport == "unix" else None,
    )
    accepted = settled(metrics_port)
    errors = total(scrape(metrics_port), "percore_connection_errors_total")
    requests = 64  # 64 MiB of responses: far more than the socket buffers hold
    with connect(server, transport) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * requests)
        # The client reads nothing: the server gives up on it and closes its side, while the client still
        # holds the socket open; the failed connection is counted.
        assert wait_for(lambda: connections(metrics_port) == (accepted + 1, 0), timeout=30)
        assert total(scrape(metrics_port), "percore_connection_errors_total") == errors + 1
        assert served(server, transport)
        assert len(read_to_end(sock)) < requests << 20


def test_a_streamed_response_the_client_does_not_read_is_disconnected_and_its_producer_stops(serve):
    metrics_port = free_port()
    server = serve(ASGI, "--loops", "1", *TIMEOUTS, "--metrics-port", str(metrics_port))
    accepted = settled(metrics_port)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_for(lambda: connections(metrics_port) == (accepted + 1, 0), timeout=30)
        assert wait_for(lambda: events(server.port) == ["endless stopped"])


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_held_by_stalled_bodies_is_released(serve):
    server = serve(NATIVE, "--loops", "1", "--body-timeout", "1")
    pid = server.process.pid
    baseline = vm_rss(pid)
    rounds, clients, sent = 5, 4, 8 << 20
    for _ in range(rounds):
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(clients)]
        try:
            for sock in socks:
                sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 15000000\r\n\r\n")
                sock.sendall(b"x" * sent)  # then stalls: the server holds what it read so far
            assert served(server)
            for sock in socks:
                assert_408_and_closed(read_to_end(sock))
        finally:
            for sock in socks:
                sock.close()
    grown = vm_rss(pid) - baseline
    # 160 MiB of stalled bodies went in; without the deadline they would all still be held.
    assert grown < rounds * clients * sent / 2, f"RSS grew by {grown >> 20} MiB"
    assert served(server)


def test_a_body_that_stops_arriving_over_tls_gets_408(serve):
    server = serve(NATIVE, "--loops", "1", *TIMEOUTS, *HTTPS)
    with connect(server, "tls") as sock:
        send_then_stall(
            sock, b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n", [b"a", b"b"]
        )
        assert_408_and_closed(read_to_end(sock))
    assert served(server, "tls")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--body-timeout", "-1"),
        ("--body-timeout", "0"),
        ("--send-timeout", "nan"),
        ("--send-timeout", "1e30"),
        ("--header-timeout", "1e30"),  # was a panic: too big for a Duration
    ],
)
def test_bad_timeout_values_exit_with_one_line(flag, value):
    assert_one_clear_line(run_cli("serve", NATIVE, flag, value), flag, "positive number of seconds")
