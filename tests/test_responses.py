"""Return values and Response classes to bytes on the wire."""

from __future__ import annotations

import json
import math

import percore
import pytest
from percore._runtime import dumps

from .conftest import leave_an_endless_stream

APP = "tests.apps.responses_app:api"


@pytest.mark.parametrize(
    "value",
    [
        {"message": "Hello, World!"},
        [1, 2.5, True, False, None, "x"],
        {"nested": {"list": [{"a": []}], "unicode": "héllo ✓ \u2028", "escape": '"\\\n\t'}},
        {"big": 2**63 - 1, "negative": -(2**63), "unsigned": 2**64 - 1},
        (1, 2),
        {},
        [],
        0,
        1.5,
        "text",
    ],
)
def test_dumps_agrees_with_the_json_module(value):
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


def test_non_string_keys_become_strings_like_the_json_module():
    assert json.loads(dumps({1: "a", 2.5: "b", None: "d"})) == {"1": "a", "2.5": "b", "null": "d"}
    assert json.loads(dumps({False: "c"})) == {"false": "c"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": object()}, "not JSON serializable"),
        ([math.nan], "not valid JSON"),
        ([math.inf], "not valid JSON"),
        ([2**64], "64 bits"),
        ({(1, 2): "tuple key"}, "dict keys"),
    ],
)
def test_values_without_a_json_form_are_rejected(value, message):
    with pytest.raises(TypeError, match=message):
        dumps(value)


def test_deep_recursion_is_an_error_not_a_crash():
    nested: list = []
    nested.append(nested)
    with pytest.raises(TypeError, match="too deep"):
        dumps(nested)


def test_response_classes_render_their_bodies():
    assert percore.JSONResponse({"a": 1}).body == b'{"a":1}'
    assert percore.HTMLResponse("<p>hi</p>").media_type.startswith("text/html")
    assert percore.Response(b"raw", status_code=204).status_code == 204
    with pytest.raises(TypeError):
        percore.Response(123)


def test_return_values_on_the_wire(serve):
    server = serve(APP, "--loops", "1")
    client = server.client()

    reply = client.get("/dict")
    assert (reply.status, reply.headers["content-type"], reply.json()) == (200, "application/json", {"a": 1})
    reply = client.get("/list")
    assert reply.json() == [1, "two", None]
    reply = client.get("/str")
    assert (reply.headers["content-type"], reply.text) == ("text/plain; charset=utf-8", "héllo")
    reply = client.get("/bytes")
    assert (reply.headers["content-type"], reply.body) == ("application/octet-stream", b"\x00\x01")
    reply = client.get("/none")
    assert (reply.status, reply.body) == (200, b"")
    reply = client.get("/created")
    assert (reply.status, reply.json()) == (201, {"created": True})
    reply = client.get("/custom")
    assert reply.status == 418
    assert reply.headers["x-teapot"] == "yes"
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.text == "<h1>teapot</h1>"
    reply = client.get("/json-response")
    assert (reply.status, reply.json()) == (202, {"accepted": [1, 2]})


NATIVE = "tests.apps.native_api:api"


def test_streaming_responses_from_async_and_sync_iterators(serve):
    import http.client

    server = serve(NATIVE, "--loops", "2", "--routing", "round-robin")
    reply = server.get("/stream?pause=0.01")
    assert (reply.status, reply.text, reply.headers.get("transfer-encoding")) == (
        200,
        "0;1;2;3;4;",
        "chunked",
    )
    assert server.get("/stream-sync").text == "line 0\nline 1\nline 2\n"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/stream?fail=true")
    with pytest.raises((http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
        connection.getresponse().read()
    assert server.get("/stream").status == 200


def test_a_client_leaving_a_native_stream_cancels_the_producer(serve):
    import time

    server = serve(NATIVE, "--loops", "1")
    leave_an_endless_stream(server.port)
    deadline = time.monotonic() + 5
    while "endless closed" not in server.get("/stream-events").json()["events"]:
        assert time.monotonic() < deadline, "the producer kept running after its client left"
        time.sleep(0.05)


def test_file_responses_stream_the_file_from_rust(serve):
    from pathlib import Path

    server = serve(NATIVE, "--loops", "1")
    reply = server.get("/file")
    expected = (Path(__file__).parent / "apps" / "native_api.py").read_bytes()
    assert reply.status == 200
    assert reply.body == expected
    assert reply.headers["content-length"] == str(len(expected))
    assert reply.headers["content-disposition"] == 'attachment; filename="native_api.py"'
    assert reply.headers["content-type"] == "text/x-python"


def test_dataclasses_and_pydantic_models_serialise_as_their_fields():
    import dataclasses
    import uuid

    from pydantic import BaseModel

    @dataclasses.dataclass
    class Point:
        x: int
        y: int
        tags: list[str] = dataclasses.field(default_factory=list)

    class User(BaseModel):
        id: uuid.UUID
        name: str
        home: Point | None = None

    ident = uuid.UUID(int=7)
    assert json.loads(dumps([Point(1, 2, ["a"])])) == [{"x": 1, "y": 2, "tags": ["a"]}]
    assert json.loads(dumps({"user": User(id=ident, name="ada", home=Point(3, 4))})) == {
        "user": {"id": str(ident), "name": "ada", "home": {"x": 3, "y": 4, "tags": []}}
    }
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps(Point)  # the class itself is not data
