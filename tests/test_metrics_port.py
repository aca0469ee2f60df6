"""The metrics port is small and private by default: it binds loopback whatever --host is, serves at most 16
connections at once, one request each, and closes any connection after 5 s (docs/observability.md)."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time

import pytest

from .conftest import free_port
from .test_metrics import scrape

APP = "tests.apps.runtime_app:api"
CAP = 16


def listening(port: int) -> list[tuple[str, int]]:
    """(local address, accept-queue length) of every TCP socket listening on `port`, from `ss -ltn`."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(row[3].rsplit(":", 1)[0], int(row[1])) for row in rows]


def other_local_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (the route to TEST-NET-1 leaves by it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_metrics_port_is_loopback_even_when_the_app_is_public(serve):
    metrics_port = free_port()
    server = serve(APP, "--host", "0.0.0.0", "--loops", "1", "--metrics-port", str(metrics_port))
    assert listening(metrics_port) == [("127.0.0.1", 0)]
    assert listening(server.port) == [("0.0.0.0", 0)]
    assert ("percore_loops", ()) in scrape(metrics_port)
    outside = other_local_address()
    if outside is not None:  # the app answers there, the metrics do not
        with socket.create_connection((outside, server.port), timeout=10):
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, metrics_port), timeout=10).close()
    assert server.stop() == 0
    assert f"metrics http://127.0.0.1:{metrics_port}/metrics" in server.stderr


def wait_closed(connection: socket.socket, timeout: float) -> None:
    """Until the server closes `connection` (EOF or reset); a timeout fails the test."""
    connection.settimeout(timeout)
    try:
        assert connection.recv(1) == b""
    except ConnectionResetError:
        pass


def test_a_silent_metrics_client_is_closed_after_the_deadline(serve):
    metrics_port = free_port()
    serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as silent:
        # 5 s in the server; the generous wait only keeps a loaded machine from failing the test, and is
        # still far below the 30 s the exporter used to allow.
        wait_closed(silent, timeout=20)
    # One request per connection: the answer closes it.
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as scraper:
        scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        reply = b""
        while chunk := scraper.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"percore_loops 1" in reply


def test_idle_connections_past_the_cap_wait_and_a_scrape_is_still_answered(serve):
    metrics_port = free_port()
    serve(APP, "--loops", "1", "--metrics-port", str(metrics_port))
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=10) for _ in range(CAP + 8)]
    try:
        # The exporter accepts 16; the other 8 wait in the listen backlog (its accept queue), not in memory.
        deadline = time.monotonic() + 10
        while listening(metrics_port) != [("127.0.0.1", 8)]:
            assert time.monotonic() < deadline, listening(metrics_port)
            time.sleep(0.02)
        # A scraper behind them is answered once the idle ones time out (each within 5 s).
        scraper = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=60)
        scraper.request("GET", "/metrics")
        reply = scraper.getresponse()
        assert reply.status == 200 and b"\npercore_loops 1\n" in reply.read()
        scraper.close()
        for connection in idle:
            wait_closed(connection, timeout=30)
    finally:
        for connection in idle:
            connection.close()
