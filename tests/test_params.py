"""Handler parameters (py/percore/params.py, runtime/src/python/params.rs) end to end: conversion,
defaults, bodies, and FastAPI-compatible 422s naming every bad field."""

from __future__ import annotations

import json
import uuid

import percore
import pytest
from percore.params import analyse

APP = "tests.apps.native_api:api"


@pytest.fixture(scope="module")
def server():
    from .conftest import ServerProcess

    process = ServerProcess(APP, "--loops", "2", "--routing", "round-robin").start()
    yield process
    assert process.stop() == 0, process.stderr


def post(server, path: str, body: bytes, content_type: str = "application/json"):
    client = server.client()
    try:
        return client.request("POST", path, body=body, headers={"Content-Type": content_type})
    finally:
        client.close()


def test_path_parameters_are_converted_by_annotation(server):
    ident = uuid.uuid4()
    reply = server.get(f"/typed/42/2.5/yes/{ident}")
    assert reply.status == 200
    assert reply.json() == {
        "number": 42,
        "ratio": 2.5,
        "flag": True,
        "ident": str(ident),
        "types": ["int", "float", "bool", "UUID"],
    }


def test_every_bad_field_is_named_in_one_422(server):
    reply = server.get("/typed/abc/x/maybe/not-a-uuid")
    assert reply.status == 422
    detail = reply.json()["detail"]
    assert [(e["loc"], e["type"], e["input"]) for e in detail] == [
        (["path", "number"], "int_parsing", "abc"),
        (["path", "ratio"], "float_parsing", "x"),
        (["path", "flag"], "bool_parsing", "maybe"),
        (["path", "ident"], "uuid_parsing", "not-a-uuid"),
    ]
    assert detail[0]["msg"] == "Input should be a valid integer, unable to parse string as an integer"


def test_query_parameters_defaults_optional_and_lists(server):
    assert server.get("/search?q=cats").json() == {"q": "cats", "limit": 10, "tags": ["seen"], "exact": None}
    reply = server.get("/search?q=a+b%21&limit=3&tags=x&tags=y&exact=false")
    assert reply.json() == {"q": "a b!", "limit": 3, "tags": ["x", "y", "seen"], "exact": False}
    # The mutable default is fresh every time.
    assert server.get("/search?q=again").json()["tags"] == ["seen"]
    assert server.get("/ids?id=1&id=2&id=3").json() == {"ids": [1, 2, 3]}
    # A repeated key for a single value: the last wins (as FastAPI).
    assert server.get("/search?q=first&q=last").json()["q"] == "last"


def test_missing_and_invalid_query_parameters(server):
    reply = server.get("/search?limit=many")
    assert reply.status == 422
    assert reply.json() == {
        "detail": [
            {"type": "missing", "loc": ["query", "q"], "msg": "Field required", "input": None},
            {
                "type": "int_parsing",
                "loc": ["query", "limit"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": "many",
            },
        ]
    }
    reply = server.get("/ids?id=1&id=two")
    assert [e["loc"] for e in reply.json()["detail"]] == [["query", "id", 1]]


def test_headers_and_cookies(server):
    client = server.client()
    reply = client.request("GET", "/headers", headers={"X-Token": "t0k", "Cookie": "a=1; session=s3cr3t"})
    assert reply.json() == {
        "x_token": "t0k",
        "user_agent": "Python-urllib" if False else None,
        "session": "s3cr3t",
    }
    missing = client.request("GET", "/headers")
    assert missing.status == 422
    assert missing.json()["detail"][0]["loc"] == ["header", "x-token"]


def test_pydantic_body(server):
    reply = post(server, "/items", b'{"name": "widget", "price": "9.5", "tags": ["a"]}')
    assert reply.status == 201
    assert reply.json() == {"name": "widget", "price": 9.5, "tags": ["a"], "type": "Item"}
    invalid = post(server, "/items", b'{"price": "free"}')
    assert invalid.status == 422
    assert [(e["loc"], e["type"]) for e in invalid.json()["detail"]] == [
        (["body", "name"], "missing"),
        (["body", "price"], "float_parsing"),
    ]


def test_dataclass_and_typed_dict_bodies(server):
    assert post(server, "/points", b'{"x": 1, "y": "2"}').json() == {"x": 1, "y": 2, "type": "Point"}
    assert post(server, "/points", b'{"x": 1}').status == 422
    assert post(server, "/movies", b'{"title": "Alien", "year": 1979}').json() == {
        "title": "Alien",
        "year": 1979,
    }
    assert post(server, "/movies", b'{"title": "Alien"}').json()["detail"][0]["loc"] == ["body", "year"]


def test_plain_dict_body_and_missing_or_malformed_json(server):
    assert post(server, "/raw", b'{"b": 1, "a": [1, {"c": null}]}').json() == {"keys": ["a", "b"]}
    wrong_type = post(server, "/raw", b"[1, 2]")
    assert wrong_type.status == 422
    assert wrong_type.json()["detail"][0]["type"] == "dict_type"
    missing = post(server, "/raw", b"")
    assert missing.status == 422
    assert missing.json()["detail"] == [
        {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    ]
    malformed = post(server, "/raw", b'{"a": ')
    assert malformed.status == 400
    assert malformed.json()["detail"].startswith("Malformed JSON body")
    assert post(server, "/optional-body", b"").json() == {"payload": None}


def test_request_json_is_awaitable_and_parsed_in_rust(server):
    body = {"n": [1, 2.5, "x", None, True, {"deep": []}], "big": 2**63 - 1}
    assert post(server, "/request-json", json.dumps(body).encode()).json() == {"echo": body}


def test_analysis_rejects_what_it_cannot_bind():
    def handler(when: complex):
        return when

    with pytest.raises(percore.ConfigurationError, match="supported: str, int"):
        analyse("GET", "/x", handler, [])

    def two_bodies(a: dict, b: dict):
        return a

    with pytest.raises(percore.ConfigurationError, match="only one parameter can be the request body"):
        analyse("POST", "/x", two_bodies, [])


def test_analysis_sources():
    def handler(
        item_id: int, q: str, payload: dict, x_id: str = percore.Header(), request: percore.Request = None
    ):
        return None

    params = {
        p.name: (p.source, p.key, p.kind, p.required)
        for p in analyse("POST", "/i/{item_id}", handler, ["item_id"])
    }
    assert params == {
        "item_id": ("path", "item_id", "int", True),
        "q": ("query", "q", "str", True),
        "payload": ("body", "payload", "json", True),
        "x_id": ("header", "x-id", "str", True),
        "request": ("request", "request", "str", False),
    }
