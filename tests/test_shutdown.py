"""Graceful stop with work still running: WebSockets are told to go away, handlers still running at the
shutdown timeout are cancelled (their cleanup runs), and only then do lifespan/loop shutdown hooks run."""

from __future__ import annotations

import concurrent.futures
import http.client
import signal
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
