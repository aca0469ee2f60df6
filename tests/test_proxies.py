"""Proxy headers (runtime/src/proxy.rs, docs/proxies.md), end to end: behind a trusted proxy the app sees the
client and scheme the proxy reports, exactly as under uvicorn, and nobody else can claim them."""

from __future__ import annotations

import json

import pytest

from .conftest import assert_one_clear_line, run_cli
from .test_asgi import exchange
from .test_asgi_websockets import serve_websockets
from .websocket_client import TEXT
from .websocket_client import connect as connect_websocket

STARLETTE = "tests.apps.starlette_app:app"
NATIVE = "tests.apps.runtime_app:api"

# Each request names its Host, so the absolute URLs the apps build do not depend on the port.
HOST = {"Host": "example.test"}
FORWARDED = [
    {},
    {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    # Each proxy appends what it saw: the rightmost hop that is not trusted is the client.
    {"X-Forwarded-For": "198.51.100.9, 203.0.113.7, 127.0.0.1"},
    {"X-Forwarded-For": "[2001:db8::1]:4711", "X-Forwarded-Proto": "wss"},
    {"X-Forwarded-For": "192.0.2.1:8080", "X-Forwarded-Proto": " http "},
    # All hops trusted: the leftmost.
    {"X-Forwarded-For": "::1, 127.0.0.1"},
    {"X-Forwarded-For": "unknown"},
    {"X-Forwarded-For": ""},
    {"X-Forwarded-Proto": "gopher"},
]


def whoami(port: int, headers: dict[str, str]) -> dict:
    status, _, body = exchange(port, "GET", "/whoami", headers={**HOST, **headers})
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize("app", [STARLETTE, NATIVE], ids=["asgi", "native"])
def test_trusted_proxy_headers_give_the_same_client_and_scheme_as_uvicorn(serve, app):
    percore = serve(app, "--loops", "2", "--routing", "round-robin")
    # uvicorn serves the Starlette app with the same defaults (on, trusting 127.0.0.1 and ::1); the native
    # app's /whoami answers in the same shape, so both are held to uvicorn's answers.
    uvicorn = serve(STARLETTE, "--log-level", "warning", server="uvicorn")
    for headers in FORWARDED:
        assert whoami(percore.port, headers) == whoami(uvicorn.port, headers), headers
    # What those answers are, for the two cases a deployment relies on.
    assert whoami(percore.port, FORWARDED[1]) == {
        "client": ["203.0.113.7", 0],
        "scheme": "https",
        "url": "https://example.test/whoami",
    }
    assert whoami(percore.port, {})["client"] == ["127.0.0.1", "ephemeral"]


@pytest.mark.parametrize(
    "args",
    [("--forwarded-allow-ips", "10.0.0.0/8, 192.168.1.1"), ("--no-proxy-headers",)],
    ids=["peer-not-trusted", "disabled"],
)
def test_headers_from_an_untrusted_peer_are_ignored(serve, args):
    server = serve(STARLETTE, "--loops", "1", *args)
    assert whoami(server.port, FORWARDED[1]) == {
        "client": ["127.0.0.1", "ephemeral"],
        "scheme": "http",
        "url": "http://example.test/whoami",
    }


def test_the_trusted_list_comes_from_the_environment_like_uvicorn(serve, monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    server = serve(NATIVE, "--loops", "1")
    # Everyone trusted: the leftmost entry is the client.
    assert whoami(server.port, {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})["client"] == [
        "198.51.100.9",
        0,
    ]
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1")
    server = serve(NATIVE, "--loops", "1")
    assert whoami(server.port, {"X-Forwarded-For": "198.51.100.9"})["client"] == ["127.0.0.1", "ephemeral"]


def test_the_access_log_names_the_forwarded_client(serve):
    server = serve(STARLETTE, "--loops", "1", "--access-log")
    whoami(server.port, FORWARDED[1])
    assert server.stop() == 0
    lines = [line for line in server.stderr.splitlines() if '"GET /whoami' in line]
    assert len(lines) == 1 and lines[0].startswith("203.0.113.7 - - ["), server.stderr


@pytest.mark.parametrize("server", ["percore", "uvicorn"])
def test_a_websocket_behind_a_tls_proxy_sees_wss_and_the_client(serve, server):
    running = serve_websockets(serve, server)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    ws = connect_websocket(running.port, "/ws-whoami", headers=headers)
    assert ws.status == 101
    opcode, payload = ws.receive()
    assert (opcode, json.loads(payload)) == (TEXT, {"client": ["203.0.113.7", 0], "scheme": "wss"})
    ws.sock.close()


def test_a_malformed_network_fails_the_start_with_one_clear_line():
    result = run_cli("serve", STARLETTE, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/33")
    assert result.returncode == 1
    assert_one_clear_line(result, "--forwarded-allow-ips", "10.0.0.0/33", "is not a network")
