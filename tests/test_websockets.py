"""Native WebSocket routes (``@api.websocket``, ``percore.WebSocket``): through the ``TestClient`` (an
in-process server on a loopback socket) and against a real ``runtime serve`` subprocess."""

from __future__ import annotations

import json
import signal
import time
from typing import Annotated

import percore
import pytest
from percore import ConfigurationError, Header, WebSocket, WebSocketDisconnect
from percore.testing import TestClient, WebSocketDenied

from .apps.native_websockets import api
from .websocket_client import TEXT
from .websocket_client import connect as connect_websocket

APP = "tests.apps.native_websockets:api"


@pytest.fixture(scope="module")
def client():
    with TestClient(api) as client:
        yield client


def wait_for_log(get, entry: str) -> None:
    deadline = time.monotonic() + 10
    while entry not in get("/log").json()["log"]:
        assert time.monotonic() < deadline, get("/log").json()
        time.sleep(0.02)


def test_echo_text_bytes_and_json(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "hello"
        ws.send_text("again")
        assert ws.receive_text() == "again"
    with client.websocket_connect("/ws-bytes") as ws:
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_bytes() == b"\x00\x01"
    with client.websocket_connect("/ws-json") as ws:
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"n": 1, "echo": True}


def test_subprotocol_and_accept_headers(client):
    with client.websocket_connect("/chat", subprotocols=["other", "chat.v1"]) as ws:
        assert ws.accepted_subprotocol == "chat.v1"
        assert ws.headers["x-chat"] == "1"
        assert ws.receive_text() == "speaking chat.v1"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1000


def test_path_query_header_and_cookie_parameters(client):
    headers = {"x-user": "bob", "cookie": "session=s1"}
    with client.websocket_connect("/rooms/blue%20room?limit=3&x=y", headers=headers) as ws:
        got = ws.receive_json()
    assert got == {
        "room": "blue room",
        "limit": 3,
        "user": "bob",
        "session": "s1",
        "path_params": {"room": "blue room"},
        "query_params": {"limit": "3", "x": "y"},
        "path": "/rooms/blue room",
        "scheme": "ws",
        "client": "127.0.0.1",
        "state": "hello from the loop",
    }


def test_invalid_parameters_refuse_the_handshake_with_fastapis_detail(client):
    with pytest.raises(WebSocketDenied) as denied:
        client.websocket_connect("/rooms/red?limit=many")
    assert denied.value.status_code == 403
    assert isinstance(denied.value, WebSocketDisconnect)
    detail = json.loads(denied.value.content)["detail"]
    assert sorted((e["type"], e["loc"]) for e in detail) == [
        ("int_parsing", ["query", "limit"]),
        ("missing", ["header", "x-user"]),
    ]


def test_dependencies_run_and_a_failing_one_refuses_the_handshake(client):
    with pytest.raises(WebSocketDenied) as denied:
        client.websocket_connect("/private", headers={"x-token": "wrong"})
    # An HTTPException before accept() answers the handshake, as FastAPI's does under uvicorn.
    assert denied.value.status_code == 401
    assert denied.value.headers["www-authenticate"] == "Bearer"
    assert json.loads(denied.value.content) == {"detail": "bad token"}
    with client.websocket_connect("/private", headers={"x-token": "secret"}) as ws:
        assert ws.receive_text() == "alice session"
        wait_for_log(client.get, "session opened for /private")
        assert "session closed" not in client.get("/log").json()["log"]
        ws.send_text("bye")
    # The yield dependency's cleanup runs once the handler has returned.
    wait_for_log(client.get, "session closed")


def test_a_client_close_raises_websocket_disconnect_with_its_code(client):
    with client.websocket_connect("/disconnect") as ws:
        ws.send_text("one")
        ws.close(4000)
    wait_for_log(client.get, "disconnect 4000")


def test_an_app_exception_closes_with_1011_and_the_server_keeps_serving(client):
    with client.websocket_connect("/boom") as ws:
        ws.send_text("go")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1011
    with client.websocket_connect("/ws") as ws:
        ws.send_text("still here")
        assert ws.receive_text() == "still here"


def test_close_before_accept_is_403_and_websocket_exception_closes_with_its_code(client):
    with pytest.raises(WebSocketDenied) as denied:
        client.websocket_connect("/deny")
    assert denied.value.status_code == 403
    with client.websocket_connect("/policy") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (4001, "not allowed")


def test_router_routes_and_dependencies_are_included(client):
    with client.websocket_connect("/r/ws") as ws:
        assert ws.receive_text() == "routed"
    wait_for_log(client.get, "audit /r/ws")


def test_plain_requests_never_reach_websocket_routes(client):
    assert client.get("/ws").status_code == 404
    assert client.get("/both").text == "http"
    with client.websocket_connect("/both") as ws:
        assert ws.receive_text() == "websocket"
    assert client.post("/both").status_code == 405
    assert client.post("/both").headers["allow"] == "GET"
    # A handshake on a path without a WebSocket route is the plain request it is.
    with pytest.raises(WebSocketDenied) as denied:
        client.websocket_connect("/plaintext")
    assert denied.value.status_code == 200


def test_websocket_routes_are_not_in_openapi():
    assert "/ws" not in api.openapi()["paths"]


def test_registration_errors_name_the_route():
    app = percore.App()
    with pytest.raises(ConfigurationError, match="must be an `async def`"):
        app.websocket("/sync")(lambda websocket: None)
    with pytest.raises(ConfigurationError, match="request body"):

        @app.websocket("/body")
        async def body(websocket: WebSocket, item: dict): ...

    with pytest.raises(ConfigurationError, match=r"needs @websocket\('/http'\)"):

        @app.get("/http")
        async def http(websocket: WebSocket): ...

    @app.websocket("/fine/{n}")
    async def fine(websocket: WebSocket, n: int, x: Annotated[str, Header()] = "d"): ...


# Against a real server subprocess: the limits the ASGI path has.


def test_oversize_message_closes_1009_and_the_handler_hears_it(serve):
    server = serve(APP, "--loops", "2", "--routing", "round-robin", "--ws-max-size", "1000")
    ws = connect_websocket(server.port, "/ws")
    assert ws.status == 101
    ws.send_text("small")
    assert ws.receive() == (TEXT, b"small")
    ws = connect_websocket(server.port, "/disconnect")
    assert ws.status == 101
    ws.send_text("x" * 2000)
    assert ws.receive_close_code() == 1009
    wait_for_log(server.get, "disconnect 1009")
    assert server.get("/plaintext").status == 200


@pytest.mark.parametrize("then", ["close", "send"])
def test_closing_or_sending_after_the_server_closed_the_connection_is_quiet(serve, then):
    """A handler's cleanup (`finally: await websocket.close()`, or a last send) after the server closed the
    connection itself (a message over --ws-max-size): close is a no-op and a send raises
    WebSocketDisconnect(1006), as on a connection that broke; no error is logged. Both used to raise
    RuntimeError("Unexpected ASGI message ... after the WebSocket was closed")."""
    server = serve(APP, "--loops", "1", "--ws-max-size", "1000")
    ws = connect_websocket(server.port, f"/cleanup?then={then}")
    assert ws.status == 101
    ws.send_text("x" * 2000)
    assert ws.receive_close_code() == 1009
    wait_for_log(server.get, f"cleanup {then} done")
    if then == "send":
        assert "cleanup send: disconnect 1006" in server.get("/log").json()["log"]
    assert server.get("/plaintext").status == 200
    assert "Unexpected ASGI message" not in server.read_stderr()
    assert "Traceback" not in server.read_stderr()


def test_app_exception_closes_1011_is_logged_and_serving_goes_on(serve):
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    ws = connect_websocket(server.port, "/boom")
    assert ws.status == 101
    ws.send_text("go")
    assert ws.receive_close_code() == 1011
    for _ in range(4):  # both loops still serve
        assert server.get("/plaintext").status == 200
    echo = connect_websocket(server.port, "/rooms/x?limit=1", headers={"x-user": "u"})
    assert echo.status == 101
    opcode, payload = echo.receive()
    assert opcode == TEXT and b'"room":"x"' in payload
    assert server.stop() == 0
    assert "RuntimeError: boom" in server.stderr


def test_server_shutdown_closes_open_websockets_with_1001_and_exits_cleanly(serve):
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    sockets = [connect_websocket(server.port, "/ws") for _ in range(2)]
    for ws in sockets:
        assert ws.status == 101
        ws.send_text("ping")
        assert ws.receive() == (TEXT, b"ping")
    server.process.send_signal(signal.SIGTERM)
    for ws in sockets:
        assert ws.receive_close_code() == 1001
    assert server.process.wait(timeout=30) == 0  # the handlers ended (a second SIGTERM would force it)
