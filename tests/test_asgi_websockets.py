"""ASGI WebSockets on percore (runtime/src/python/websocket.rs: the handshake decided by the app, the
``receive()`` queue, the frame pump; runtime/src/websocket.rs), end to end over real sockets. Each test runs
against uvicorn with wsproto too, to prove the test itself. Limits (--ws-max-queue, --max-connections):
tests/test_websocket_limits.py."""

from __future__ import annotations

import time

import pytest

from .conftest import ServerProcess
from .websocket_client import BINARY, PING, PONG, TEXT
from .websocket_client import connect as connect_websocket

STARLETTE = "tests.apps.starlette_app:app"


def serve_websockets(serve, server: str, app: str = STARLETTE, *args: str) -> ServerProcess:
    """percore (two loops, round-robin) or uvicorn with wsproto, both given `args`: the same WebSocket
    tests run against uvicorn to prove the tests themselves."""
    if server == "percore":
        return serve(app, "--loops", "2", "--routing", "round-robin", *args)
    return serve(
        app, "--lifespan", "on", "--ws", "wsproto", "--log-level", "warning", *args, server="uvicorn"
    )


def wait_for_websocket_log(server: ServerProcess, entry: str) -> None:
    deadline = time.monotonic() + 5
    while entry not in server.get("/websocket-log").json()["log"]:
        assert time.monotonic() < deadline, server.get("/websocket-log").json()
        time.sleep(0.05)


@pytest.fixture(params=["percore", "uvicorn"])
def websocket_server(serve, request):
    return serve_websockets(serve, request.param)


def test_websocket_accepts_with_subprotocol_and_echoes_text_and_binary(websocket_server):
    ws = connect_websocket(websocket_server.port, "/ws", subprotocols=("other", "chat.v1"))
    assert ws.status == 101
    assert ws.headers["sec-websocket-protocol"] == "chat.v1"
    for n in range(3):
        ws.send_text(f"hello {n}")
        assert ws.receive() == (TEXT, f"echo: hello {n}".encode())
    ws.send_bytes(b"\x00\x01\x02" * 1000)
    assert ws.receive() == (BINARY, (b"\x00\x01\x02" * 1000)[::-1])
    ws.send_text("close please")
    assert ws.receive_close_code() == 4001
    ws.sock.close()


def test_websocket_client_disconnect_reaches_the_app(websocket_server):
    ws = connect_websocket(websocket_server.port, "/ws")
    assert ws.status == 101
    ws.send_text("hi")
    assert ws.receive()[0] == TEXT
    ws.close(1001)
    ws.sock.close()
    wait_for_websocket_log(websocket_server, "disconnect 1001")


@pytest.mark.parametrize("server", ["percore", "uvicorn"])
def test_a_websocket_message_over_ws_max_size_closes_with_1009(serve, server):
    websocket_server = serve_websockets(serve, server, STARLETTE, "--ws-max-size", "1000")
    ws = connect_websocket(websocket_server.port, "/ws")
    ws.send_text("x" * 1000)  # at the limit: fine
    assert ws.receive() == (TEXT, b"echo: " + b"x" * 1000)
    ws.send_bytes(b"y" * 1001)
    assert ws.receive_close_code() == 1009
    ws.sock.close()
    wait_for_websocket_log(websocket_server, "disconnect 1009")
    assert websocket_server.get("/plaintext").status == 200


def test_a_websocket_client_that_stops_answering_pings_is_closed_with_1011(serve):
    # Seconds of slack for the client that answers (a loaded CI machine), and still a quick close.
    server = serve(STARLETTE, "--loops", "1", "--ws-ping-interval", "0.5", "--ws-ping-timeout", "2")
    alive = connect_websocket(server.port, "/ws")
    silent = connect_websocket(server.port, "/ws")
    # A client that answers every ping stays open across several intervals...
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        opcode, payload = alive.receive()
        assert opcode == PING
        alive.send(PONG, payload)
    # ...while one that answers nothing was pinged, then closed with 1011, and its app was told.
    assert silent.receive()[0] == PING
    assert silent.receive_close_code() == 1011
    wait_for_websocket_log(server, "disconnect 1011")
    alive.send_text("still here")
    while (frame := alive.receive())[0] == PING:
        alive.send(PONG, frame[1])
    assert frame == (TEXT, b"echo: still here")
    alive.sock.close()
    silent.sock.close()


@pytest.mark.parametrize(
    ("path", "status"), [("/ws-denied", 403), ("/ws-crash", 500), ("/ws-unauthorized", 401)]
)
def test_websocket_denied_before_accept(websocket_server, path, status):
    ws = connect_websocket(websocket_server.port, path)
    assert ws.status == status
    ws.sock.close()
    assert websocket_server.get("/plaintext").status == 200


def test_websocket_receive_survives_a_cancelled_receive(websocket_server):
    ws = connect_websocket(websocket_server.port, "/ws-patient")
    assert ws.status == 101
    assert ws.receive() == (TEXT, b"timed out")  # the app's first receive() was cancelled
    ws.send_text("hello")
    assert ws.receive() == (TEXT, b"late: hello")
    ws.sock.close()
