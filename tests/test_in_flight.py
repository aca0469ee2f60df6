"""`--max-in-flight` counts an ASGI request until its app has finished, not only until its client left:
ASGI apps are not cancelled when the client goes, and an app still running occupies its loop. Compared
with uvicorn's `--limit-concurrency`, which counts the same way (its running tasks)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from .conftest import free_port
from .test_metrics import scrape, value

APP = "tests.apps.hardening_apps:lingering"
LIMIT = 4


def marks(directory: Path, what: str) -> int:
    path = directory / what
    return path.read_text().count("x") if path.exists() else 0


def wait_for_marks(directory: Path, what: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while marks(directory, what) < count:
        assert time.monotonic() < deadline, f"only {marks(directory, what)} of {count} apps {what}"
        time.sleep(0.02)


def status_of(port: int) -> tuple[int, bytes]:
    """GET /ok on a fresh connection: (status, raw reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


def send_and_leave(port: int, directory: Path, number: int) -> None:
    """A client that sends its request and leaves once its app has started, without the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /linger HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for_marks(directory, "started", number)
    wait_for_marks(directory, "disconnected", number)


@pytest.mark.parametrize("server_name", ["percore", "uvicorn"])
def test_an_app_whose_client_left_still_counts_until_it_finishes(serve, tmp_path, monkeypatch, server_name):
    monkeypatch.setenv("PERCORE_TEST_DIR", str(tmp_path))
    metrics_port = free_port()
    if server_name == "percore":
        args = ["--loops", "1", "--max-in-flight", str(LIMIT), "--metrics-port", str(metrics_port)]
    else:
        args = ["--limit-concurrency", str(LIMIT), "--log-level", "warning"]
    server = serve(APP, *args, server=server_name)
    # One at a time, each client gone before the next comes (uvicorn's limit also counts open connections).
    for number in range(1, LIMIT + 1):
        send_and_leave(server.port, tmp_path, number)
    # All clients are gone, their apps still run: the loop is full.
    status, reply = status_of(server.port)
    assert status == 503, reply
    if server_name == "percore":
        assert b"retry-after: 1" in reply.lower()
        assert value(scrape(metrics_port), "percore_in_flight_requests", loop="0") == LIMIT
    assert marks(tmp_path, "finished") == 0
    # Once the apps finish, requests are admitted again and nothing stays counted.
    (tmp_path / "release").touch()
    wait_for_marks(tmp_path, "finished", LIMIT)
    deadline = time.monotonic() + 20
    while (status := status_of(server.port)[0]) != 200:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.02)
    if server_name == "percore":
        assert value(scrape(metrics_port), "percore_in_flight_requests", loop="0") == 0
