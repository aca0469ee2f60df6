"""Graceful stop with work still running: WebSockets are told to go away, handlers still running at the
shutdown timeout are cancelled (their cleanup runs), and only then do lifespan/loop shutdown hooks run."""

from __future__ import annotations

import concurrent.futures
import http.client
import signal
import socket
import time

import pytest

from . import websocket_client
from .conftest import ServerProcess


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def events(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def start(tmp_path, monkeypatch):
    started: list[ServerProcess] = []
    log = tmp_path / "events"
    monkeypatch.setenv("PERCORE_TEST_EVENTS", str(log))

    def run(app: str, *args: str) -> ServerProcess:
        server = ServerProcess(f"tests.apps.shutdown_apps:{app}", "--loops", "1", *args).start()
        started.append(server)
        return server

    run.log = log
    yield run
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.parametrize("app", ["native", "asgi"])
def test_a_handler_running_past_the_shutdown_timeout_is_cancelled_before_the_shutdown_hooks(start, app):
    server = start(app, "--shutdown-timeout", "1")
    hook = "loop stop hook" if app == "native" else "lifespan shutdown"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(server.get, "/stuck")
        assert wait_for(lambda: "handler started" in events(start.log))
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=15)
        try:
            reply = stuck.result(timeout=5)
        except (ConnectionError, http.client.HTTPException):
            reply = None  # the connection was dropped: its handler was cancelled
        assert reply is None or reply.status >= 500
    server.stderr = server.read_stderr()
    assert code == 0, server.stderr
    assert events(start.log) == ["handler started", "handler cancelled", hook]
    assert "cancelling 1 running request(s)" in server.stderr


def test_open_websockets_are_closed_with_going_away_and_the_app_sees_it(start):
    server = start("asgi", "--shutdown-timeout", "10")
    socket = websocket_client.connect(server.port, "/ws")
    assert socket.status == 101
    socket.send_text("hello")
    assert socket.receive() == (websocket_client.TEXT, b"hello")
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert socket.receive_close_code() == 1001
    code = server.process.wait(timeout=15)
    server.stderr = server.read_stderr()
    # Not held for the whole shutdown timeout: the WebSocket was told to close at once.
    assert time.monotonic() - started < 8
    assert code == 0, server.stderr
    assert events(start.log) == ["websocket open", "websocket disconnect 1001", "lifespan shutdown"]


def test_a_websocket_app_sending_faster_than_its_client_reads_waits_instead_of_buffering(start):
    frames = 4000  # 16 KiB each: 64 MB if the server buffered everything
    server = start("asgi")
    socket = websocket_client.connect(server.port, f"/flood?{frames}")
    assert socket.status == 101
    # The client reads nothing for a while: the app must be held back by its `await send(...)`.
    time.sleep(1.5)
    sent_while_stalled = [line for line in events(start.log) if line.startswith("sent")]
    assert sent_while_stalled == [] or int(sent_while_stalled[-1].split()[1]) < 2000, sent_while_stalled
    # Then everything arrives, complete and in order.
    for expected in range(1, frames + 1):
        opcode, payload = socket.receive()
        assert opcode == websocket_client.BINARY
        assert payload == expected.to_bytes(4, "big") * 4096
    assert socket.receive_close_code() == 1000
    assert wait_for(lambda: f"sent {frames}" in events(start.log))
    socket.sock.close()


def leave_during(server: ServerProcess, log, path: str) -> None:
    """GET `path` and hang up once its handler has started (the handler runs on)."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert wait_for(lambda: "sync handler started" in events(log))
    finally:
        raw.close()


def test_the_shutdown_hooks_wait_for_a_def_handler_whose_client_left(start):
    # The `def` handler runs on the sync pool; its client has left, so no connection holds the stop.
    server = start("native", "--shutdown-timeout", "60")
    leave_during(server, start.log, "/sync-wait")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1)  # room for a stop that does not wait to run its hooks now (what this test catches)
    start.log.with_name(start.log.name + ".release").touch()
    code = server.process.wait(timeout=30)
    server.stderr = server.read_stderr()
    assert code == 0, server.stderr
    assert events(start.log) == ["sync handler started", "sync handler finished", "loop stop hook"]


def test_a_def_handler_past_the_shutdown_timeout_does_not_stretch_the_stop_past_it(start):
    # The handler blocks for a minute and cannot be interrupted: the stop gives it the one shutdown
    # timeout (not one per stage: loops, then the sync pool, then the thread pool) and exits.
    server = start("native", "--shutdown-timeout", "5")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(server.get, "/sync-wait")
        assert wait_for(lambda: "sync handler started" in events(start.log))
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=9)  # 5 s, plus a moment to cancel; not 2 × 5 s
        finally:
            start.log.with_name(start.log.name + ".release").touch()
        try:
            reply = stuck.result(timeout=5)
        except (ConnectionError, http.client.HTTPException):
            reply = None
        assert reply is None or reply.status >= 500
    server.stderr = server.read_stderr()
    assert code == 0, server.stderr
    assert events(start.log) == ["sync handler started", "loop stop hook"]


def test_a_def_handler_whose_client_left_counts_in_flight_until_it_returns(start):
    server = start("native", "--max-in-flight", "1")
    leave_during(server, start.log, "/sync-wait")
    time.sleep(0.5)  # room for the server to see the client leave (what would free the slot too early)
    # The handler still runs, so the one slot is still taken.
    assert server.get("/ping").status == 503
    start.log.with_name(start.log.name + ".release").touch()
    assert wait_for(lambda: server.get("/ping").status == 200)
