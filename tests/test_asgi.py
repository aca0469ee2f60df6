"""ASGI apps on the loop pool (py/percore/_asgi.py, runtime/src/python/asgi.rs), end to end.

Real FastAPI and Starlette apps are served by percore and by uvicorn (the reference) side by side; the
same scripted requests must give the same status, body and the headers that matter.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time

import pytest

from .apps import starlette_app
from .conftest import (
    FREE_THREADED,
    ServerProcess,
    assert_one_clear_line,
    free_port,
    leave_an_endless_stream,
    run_cli,
)
from .test_asgi_websockets import serve_websockets
from .websocket_client import TEXT
from .websocket_client import connect as connect_websocket

FASTAPI = "tests.apps.fastapi_app:app"
STARLETTE = "tests.apps.starlette_app:app"
LITESTAR = "tests.apps.litestar_app:app"
RAW = "tests.apps.asgi_apps"
HEADERS_THAT_MATTER = (
    "content-type",
    "content-length",
    "location",
    "set-cookie",
    "x-missing",
    "x-middleware",
)


def exchange(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        kept = {k.lower(): v for k, v in reply.getheaders() if k.lower() in HEADERS_THAT_MATTER}
        return reply.status, kept, reply.read()
    finally:
        connection.close()


@pytest.fixture(params=["local", "round-robin"])
def routing(request):
    return request.param


FASTAPI_SCRIPT = [
    ("GET", "/json", None, {}),
    (
        "GET",
        "/items/5?q=hello&offset=2&limit=3",
        None,
        {"User-Agent": "percore-test", "Cookie": "session=s1"},
    ),
    ("GET", "/items/not-a-number", None, {}),
    (
        "POST",
        "/items",
        b'{"name": "widget", "price": 9.5, "tags": ["a", "b"]}',
        {"Content-Type": "application/json"},
    ),
    ("POST", "/items", b'{"name": "widget"}', {"Content-Type": "application/json"}),
    ("POST", "/items", b"{not json", {"Content-Type": "application/json"}),
    ("GET", "/missing/7", None, {}),
    ("GET", "/teapot", None, {}),
    ("GET", "/crash", None, {}),
    ("GET", "/sync", None, {}),
    ("GET", "/stream", None, {}),
    ("POST", "/form", b"name=ada&count=3", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("GET", "/cookie", None, {}),
    ("GET", "/no/such/route", None, {}),
    ("DELETE", "/json", None, {}),
    ("GET", "/state", None, {}),
    ("GET", "/openapi.json", None, {}),
]

STARLETTE_SCRIPT = [
    ("GET", "/plaintext", None, {}),
    ("POST", "/echo", b"x" * 200_000, {"Content-Type": "application/octet-stream"}),
    ("POST", "/echo", b"", {}),
    ("GET", "/stream", None, {}),
    ("GET", "/file", None, {}),
    ("GET", "/redirect", None, {}),
    ("GET", "/nope", None, {}),
]


LITESTAR_SCRIPT = [
    ("GET", "/json", None, {}),
    ("GET", "/items/5?q=hello&limit=3", None, {"User-Agent": "percore-test", "Cookie": "session=s1"}),
    ("GET", "/items/not-a-number", None, {}),
    (
        "POST",
        "/items",
        b'{"name": "widget", "price": 9.5, "tags": ["a"]}',
        {"Content-Type": "application/json"},
    ),
    ("POST", "/items", b'{"name": "widget"}', {"Content-Type": "application/json"}),
    ("POST", "/items", b"{not json", {"Content-Type": "application/json"}),
    ("GET", "/missing/7", None, {}),
    ("GET", "/teapot", None, {}),
    ("GET", "/crash", None, {}),
    ("GET", "/sync", None, {}),
    ("GET", "/stream", None, {}),
    ("GET", "/state", None, {}),
    ("GET", "/no/such/route", None, {}),
    ("DELETE", "/json", None, {}),
]
# Litestar needs msgspec, which has no free-threaded (cp313t) wheel and whose sdist does not build there,
# so it is installed (tests/requirements-gil.txt) and tested on the GIL build only.
LITESTAR_ON_THIS_BUILD = pytest.mark.skipif(
    FREE_THREADED, reason="Litestar's msgspec does not build for free-threaded 3.13t"
)


@pytest.mark.parametrize(
    ("app", "script"),
    [
        (FASTAPI, FASTAPI_SCRIPT),
        (STARLETTE, STARLETTE_SCRIPT),
        pytest.param(LITESTAR, LITESTAR_SCRIPT, marks=LITESTAR_ON_THIS_BUILD, id="litestar"),
    ],
)
def test_same_answers_as_uvicorn(serve, routing, app, script):
    percore = serve(app, "--loops", "2", "--routing", routing)
    uvicorn = serve(app, "--lifespan", "on", "--log-level", "warning", server="uvicorn")
    for method, path, body, headers in script:
        ours = exchange(percore.port, method, path, body, headers)
        theirs = exchange(uvicorn.port, method, path, body, headers)
        assert ours == theirs, f"{method} {path}"


def test_a_request_body_arrives_in_chunks_with_more_body():
    # A chunked upload larger than what is read eagerly is delivered as several http.request messages.
    server = ServerProcess(STARLETTE, "--loops", "1").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(4):
                raw.sendall(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
                time.sleep(0.05)
            raw.sendall(b"0\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received:
                received += raw.recv(65536)
            length = int(received.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(received.partition(b"\r\n\r\n")[2]) < length:
                chunk = raw.recv(65536)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body.count(b"y") == 4 * 0x10000
    finally:
        assert server.stop() == 0


def test_streaming_responses_reach_the_client_as_they_are_produced(serve):
    server = serve(STARLETTE, "--loops", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        started = time.monotonic()
        raw.sendall(b"GET /slow-stream HTTP/1.1\r\nHost: t\r\n\r\n")
        first = b""
        while b"first;" not in first:
            first += raw.recv(4096)
        first_at = time.monotonic() - started
        rest = b""
        while b"0\r\n\r\n" not in rest:
            rest += raw.recv(4096)
        total = time.monotonic() - started
    assert b"transfer-encoding: chunked" in first.lower()
    assert b"second;" in rest
    # The generator sleeps 1 s between its chunks: the first must not wait for the second.
    assert first_at < total - 0.5


def test_pathsend_serves_the_file_from_rust(serve):
    server = serve(STARLETTE, "--loops", "1")
    status, headers, body = exchange(server.port, "GET", "/file")
    assert status == 200
    assert body == starlette_app.FILE_BYTES
    assert headers["content-length"] == str(len(starlette_app.FILE_BYTES))


def test_scope_headers_keep_order_and_duplicates_and_root_path(serve):
    server = serve(STARLETTE, "--loops", "2", "--routing", "round-robin", "--root-path", "/api")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("GET", "/headers?a=1&a=2", skip_host=True, skip_accept_encoding=True)
    for name, value in [("Host", "t"), ("X-Dup", "one"), ("X-Other", "mid"), ("X-Dup", "two")]:
        connection.putheader(name, value)
    connection.endheaders()
    scope = __import__("json").loads(connection.getresponse().read())
    connection.close()
    # Duplicates are kept, in order. (hyper groups repeated names at the first one's place: it does not
    # expose the interleaving of different names, so x-other comes after both x-dup values.)
    assert scope["headers"] == [["host", "t"], ["x-dup", "one"], ["x-dup", "two"], ["x-other", "mid"]]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/headers"
    assert scope["raw_path"] == "/headers"
    assert scope["query_string"] == "a=1&a=2"
    assert scope["http_version"] == "1.1"


def test_lifespan_runs_on_every_loop_and_its_state_belongs_to_that_loop(serve):
    server = serve(STARLETTE, "--loops", "2", "--routing", "round-robin")
    client = server.client()
    for _ in range(6):
        assert client.get("/headers").json()["same_thread"] is True


def test_no_lifespan_skips_startup(serve):
    server = serve(FASTAPI, "--loops", "1", "--no-lifespan")
    # Without lifespan there is no state: the app's own error, a 500, and the server keeps serving.
    assert server.get("/state").status == 500
    assert server.get("/json").status == 200


def test_a_lifespan_startup_failure_stops_the_server_with_the_apps_message():
    port = free_port()
    server = ServerProcess(f"{RAW}:failing_startup", "--loops", "2", port=port)
    server.process = __import__("subprocess").Popen(
        server.command,
        cwd=str(__import__("pathlib").Path(__file__).parent.parent),
        stdout=-1,
        stderr=-1,
        text=True,
    )
    _, stderr = server.process.communicate(timeout=20)
    assert server.process.returncode != 0
    assert "database unreachable" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "path",
    [
        "/body-before-start",
        "/start-twice",
        "/bad-status",
        "/bad-header",
        "/no-response",
        "/raise",
        "/unknown-message",
    ],
)
def test_protocol_errors_give_500_and_the_loop_keeps_serving(serve, path):
    server = serve(f"{RAW}:misbehaving", "--loops", "1")
    client = server.client()
    reply = client.get(path)
    assert reply.status == 500
    assert reply.text == "Internal Server Error"
    assert client.get("/ok").text == "fine"
    server.stop()
    assert f"Exception in handler for GET {path}" in server.stderr


def test_receive_and_send_awaitables_work_however_they_are_driven(serve):
    """`send()`'s result is None and `receive()`'s the message whether awaited, stepped by hand (`__await__`
    then `.send(None)`), wrapped in a task or in `wait_for` - percore completes them without suspending."""
    server = serve(f"{RAW}:awaitables", "--loops", "1")
    reply = server.client().request("POST", "/", body=b"hi")
    assert reply.status == 200
    chunks, report = reply.body.split(b"|", 1)
    assert chunks == b"1234"
    assert json.loads(report) == {
        "receive by hand": ["http.request", "hi", False],
        "await send": None,
        "send by hand": None,
        "send as a task": None,
        "send with wait_for": None,
        "send via yield from": None,
    }
    assert server.get("/").status == 200  # and the loop goes on serving


def test_a_failure_after_streaming_started_aborts_the_response(serve):
    server = serve(f"{RAW}:misbehaving", "--loops", "1")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/raise-mid-stream")
    # The connection is dropped: depending on what was flushed, the client sees no response or a cut
    # body, never a complete one.
    with pytest.raises((http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
        connection.getresponse().read()
    assert server.get("/ok").text == "fine"


def test_a_body_after_the_response_completed_is_logged_not_sent(serve):
    server = serve(f"{RAW}:misbehaving", "--loops", "1")
    assert server.get("/body-after-complete").text == "done"
    server.stop()
    assert "after the response completed" in server.stderr


def test_a_client_that_goes_away_is_seen_as_http_disconnect(serve):
    server = serve(STARLETTE, "--loops", "2", "--routing", "round-robin")
    for attempt in range(2):
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.sendall(b"GET /wait-for-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 10
        while server.get("/disconnects").json()["waiting"] < attempt + 1:  # the handler is waiting
            assert time.monotonic() < deadline, "the /wait-for-disconnect request never reached the app"
            time.sleep(0.01)
        raw.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = server.get("/disconnects").json()["disconnects"]
        if len(seen) == 2:
            break
        time.sleep(0.05)
    assert seen == ["http.disconnect", "http.disconnect"]


def test_background_tasks_run_after_the_response(serve):
    server = serve(FASTAPI, "--loops", "1")
    assert server.get("/background-log").json() == {"log": []}
    client = server.client()
    assert client.request("POST", "/background?word=pong").json() == {"scheduled": "pong"}
    deadline = time.monotonic() + 5
    while client.get("/background-log").json() != {"log": ["pong"]}:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_concurrent_requests_across_loops(serve):
    server = serve(FASTAPI, "--loops", "2", "--routing", "least-loaded")

    def one(n: int):
        status, _, body = exchange(server.port, "GET", f"/items/{n}?q=x")
        return status, __import__("json").loads(body)["item_id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [(200, n) for n in range(64)]


@pytest.mark.parametrize(
    ("target", "args", "fragment"),
    [
        (f"{RAW}:Asgi2App", [], "not an ASGI 3 application"),
        (f"{RAW}:not_callable", [], "neither a percore.App nor an ASGI application"),
        (FASTAPI, ["--interface", "native"], "--interface native needs a percore.App"),
        ("tests.apps.runtime_app:api", ["--interface", "asgi"], "served natively"),
    ],
)
def test_objects_that_are_not_asgi_3_apps_fail_at_startup(target, args, fragment):
    assert_one_clear_line(run_cli("serve", target, *args), fragment)


def test_a_client_leaving_a_stream_stops_the_generator(serve):
    server = serve(STARLETTE, "--loops", "1")
    leave_an_endless_stream(server.port)
    deadline = time.monotonic() + 5
    while server.get("/stream-log").json()["events"] != ["stream closed"]:
        assert time.monotonic() < deadline, "the stream kept running after its client left"
        time.sleep(0.05)


@LITESTAR_ON_THIS_BUILD
@pytest.mark.parametrize("server", ["percore", "uvicorn"])
def test_litestar_background_tasks_and_websockets(serve, server):
    running = serve_websockets(serve, server, LITESTAR)
    assert running.get("/background").json() == {"scheduled": True}
    deadline = time.monotonic() + 5
    while "background ran" not in running.get("/events").json()["events"]:
        assert time.monotonic() < deadline, "the background task never ran"
        time.sleep(0.05)
    ws = connect_websocket(running.port, "/ws")
    assert ws.status == 101
    for n in range(3):
        ws.send_text(f"hi {n}")
        assert ws.receive() == (TEXT, f"echo: hi {n}".encode())
    ws.send_text("bye")
    assert ws.receive_close_code() == 4000
    ws.sock.close()


@LITESTAR_ON_THIS_BUILD
def test_litestar_app_state_is_shared_by_every_loop(serve):
    """The documented pitfall: Litestar's lifespan writes app.state, which every loop shares."""
    server = serve(LITESTAR, "--loops", "2", "--routing", "round-robin")
    seen = {server.get("/state-thread").json()["same_thread"] for _ in range(6)}
    assert seen == {True, False}
