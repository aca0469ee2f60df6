"""WebSocket resource bounds over real sockets (docs/limits.md): the receive queue (--ws-max-queue) pushes
back on the client, a client that reads nothing is dropped after --send-timeout, WebSockets count against
--max-connections and in percore_open_connections, an app that only sends is stopped once the client has
left, and app objects that call back into receive()/send() while the server reads them neither hang the
loop nor its shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from .conftest import assert_one_clear_line, free_port, run_cli
from .test_metrics import scrape, value
from .websocket_client import BINARY, CLOSE, TEXT
from .websocket_client import connect as connect_websocket

APP = "tests.apps.websocket_limits_app:app"
MiB = 1 << 20


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return result


def test_an_app_that_does_not_receive_makes_the_client_wait_and_memory_stays_bounded(serve):
    server = serve(APP, "--loops", "1")
    ws = connect_websocket(server.port, "/ws-hoard")
    assert ws.status == 101
    ws.sock.settimeout(300)  # sendall blocks while the server pushes back
    pid = server.process.pid
    baseline = memory_kib(pid, "VmRSS")
    frames, sent = 200, [0]
    payload = b"m" * (MiB - 4)

    def sending():
        for index in range(frames):
            ws.send_bytes(index.to_bytes(4, "big") + payload)
            sent[0] += 1
        ws.send_bytes(b"done")

    sender = threading.Thread(target=sending, daemon=True)
    sender.start()
    # The client's sends block: the server reads the app's 32 queued messages and what the socket buffers
    # hold, then nothing more while the app does not receive. (Buffered, all 200 MiB would be read at once.)
    last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 120
    while sent[0] != last or time.monotonic() - still_since < 1:
        if sent[0] != last:
            last, still_since = sent[0], time.monotonic()
        assert time.monotonic() < deadline, f"the client kept sending ({sent[0]} MiB)"
        time.sleep(0.05)
    assert sent[0] < frames
    assert memory_kib(pid, "VmRSS") - baseline < 100 * 1024
    # Once the app reads, every message arrives, in order, and the server's peak stayed bounded.
    assert server.get("/release").status == 200
    sender.join(120)
    assert not sender.is_alive()
    assert ws.receive() == (TEXT, f"{frames} in order".encode())
    assert memory_kib(pid, "VmHWM") - baseline < 100 * 1024
    ws.close()
    ws.sock.close()


def test_a_client_that_reads_nothing_is_closed_after_the_send_timeout(serve):
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--send-timeout", "1", "--metrics-port", str(metrics_port))
    ws = connect_websocket(server.port, "/ws-flood")  # the app sends 1 MiB messages; we read none
    assert ws.status == 101
    # The server's frames make no progress: after the send timeout it drops the socket and tells the app.
    wait_for(lambda: "disconnect 1006" in server.get("/log").json(), "the app was not told")
    wait_for(
        lambda: value(scrape(metrics_port), "percore_open_connections", loop="0") == 0,
        "the dropped WebSocket is still counted as open",
    )
    # What the kernel had buffered for the client is followed by the end of the connection.
    ws.sock.settimeout(30)
    try:
        while ws.sock.recv(MiB):
            pass
    except ConnectionResetError:
        pass
    ws.sock.close()
    assert server.get("/plaintext").status == 200


def test_an_app_that_only_sends_gets_an_error_once_the_client_has_left_and_the_loop_serves_on(serve):
    server = serve(APP, "--loops", "1")
    ws = connect_websocket(server.port, "/ws-sender")  # the app sends in a loop and never receives
    assert ws.status == 101
    assert ws.receive() == (TEXT, b"tick")
    ws.close(1000)
    ws.sock.close()
    # Sends on the closed connection raise (an awaitable completed at once would never yield to the
    # loop: the app would hold the loop's thread forever, and nothing else on it would be served).
    wait_for(lambda: "sender: OSError" in server.get("/log").json(), "send() did not raise")
    assert server.get("/plaintext").status == 200


def test_websockets_count_against_max_connections_and_as_open_connections(serve):
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--max-connections", "5", "--metrics-port", str(metrics_port))

    def open_connections():
        return value(scrape(metrics_port), "percore_open_connections", loop="0")

    sockets = [connect_websocket(server.port, "/ws-echo") for _ in range(5)]
    for n, ws in enumerate(sockets):
        assert ws.status == 101
        ws.send_text(f"hi {n}")
        assert ws.receive() == (TEXT, f"hi {n}".encode())
    assert open_connections() == 5
    # A sixth connection waits in the backlog, as with five plain HTTP connections open...
    waiting = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    waiting.sendall(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(4096)
    # ...until a WebSocket closes.
    sockets[0].close(1000)
    assert sockets[0].receive_close_code() == 1000
    sockets[0].sock.close()
    waiting.settimeout(10)
    assert waiting.recv(4096).startswith(b"HTTP/1.1 200")
    waiting.close()
    wait_for(lambda: open_connections() == 4, "the gauge does not count the 4 open WebSockets")
    for ws in sockets[1:]:
        ws.close(1000)
        ws.sock.close()
    wait_for(lambda: open_connections() == 0, "closed WebSockets still counted")


def test_app_objects_calling_back_into_receive_and_send_do_not_hang_the_loop(serve):
    server = serve(APP, "--loops", "1")
    ws = connect_websocket(server.port, "/ws-adversarial")
    assert ws.status == 101
    assert ws.headers["x-adversarial"] == "1"
    frames = []
    while (frame := ws.receive())[0] != CLOSE:
        frames.append(frame)
    assert frame[1][:2] == (4000).to_bytes(2, "big")
    ws.sock.close()
    report = json.loads(frames[-2][1])
    # During the handshake only accept/close are valid: the callback's send() got a clear error.
    assert "headers: send raised RuntimeError" in report
    # Once open, the callbacks' sends went out, before the message being read.
    assert "__eq__: send ok" in report
    assert "__getitem__: send ok" in report
    assert frames[0] == (TEXT, b"from __eq__")
    assert (TEXT, b"sneaky") in frames
    assert (BINARY, b"hi") in frames
    assert frames[-1] == (TEXT, b"from __index__")
    # The loop serves on, and stops on SIGTERM (the fixture asserts exit code 0).
    assert server.get("/plaintext").status == 200
    wait_for(lambda: "adversarial done" in server.get("/log").json(), "the app did not finish")
    assert server.stop() == 0


def test_ws_max_queue_must_be_positive():
    assert_one_clear_line(run_cli("serve", APP, "--ws-max-queue", "0"), "--ws-max-queue must be at least 1")
