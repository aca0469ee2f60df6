"""Return values and Response classes to bytes on the wire."""

from __future__ import annotations

import json
import math

import percore
import pytest
from percore._runtime import dumps

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
