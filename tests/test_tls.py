"""HTTPS (runtime/src/tls.rs, docs/tls.md) over real sockets: the server terminates TLS with the given
certificate; apps see the https/wss scheme exactly as under uvicorn; clients that do not complete a handshake
lose only their own connection; bad certificate options stop the start with one clear line.

The certificate in tests/certs is a self-signed one for localhost, 127.0.0.1 and ::1 (tests/certs/README.md)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import pytest

from .conftest import ROOT, assert_one_clear_line, free_port, loops_answering, run_cli
from .test_asgi_websockets import serve_websockets
from .test_metrics import scrape, total, wait_for
from .websocket_client import connect as connect_websocket

STARLETTE = "tests.apps.starlette_app:app"
NATIVE = "tests.apps.runtime_app:api"
CERTS = ROOT / "tests" / "certs"
CERTFILE, KEYFILE = str(CERTS / "localhost.crt"), str(CERTS / "localhost.key")
HTTPS = ("--ssl-certfile", CERTFILE, "--ssl-keyfile", KEYFILE)


def client_context() -> ssl.SSLContext:
    """A client that trusts only the test certificate and checks the host name, as a browser would."""
    return ssl.create_default_context(cafile=CERTFILE)


def https_json(port: int, path: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPSConnection("localhost", port, timeout=10, context=client_context())
    try:
        connection.request("GET", path, headers=headers or {})
        reply = connection.getresponse()
        body = reply.read()
        assert reply.status == 200, body
        return json.loads(body)
    finally:
        connection.close()


@pytest.mark.parametrize("app", [STARLETTE, NATIVE], ids=["asgi", "native"])
def test_https_gives_the_app_the_https_scheme_as_uvicorn_does(serve, app):
    percore = serve(app, "--loops", "2", "--routing", "round-robin", *HTTPS)
    uvicorn = serve(STARLETTE, "--log-level", "warning", *HTTPS, server="uvicorn")
    host = {"Host": "example.test"}
    seen = https_json(percore.port, "/whoami", host)
    assert seen == https_json(uvicorn.port, "/whoami", host)
    assert seen == {
        "client": ["127.0.0.1", "ephemeral"],
        "scheme": "https",
        "url": "https://example.test/whoami",
    }
    # A trusted proxy's X-Forwarded-Proto still wins, as under uvicorn.
    forwarded = {**host, "X-Forwarded-Proto": "http"}
    assert https_json(percore.port, "/whoami", forwarded) == https_json(uvicorn.port, "/whoami", forwarded)
    assert https_json(percore.port, "/whoami", forwarded)["scheme"] == "http"
    # Keep-alive over one TLS connection, the requests spread over both loops.
    if app == NATIVE:
        connection = http.client.HTTPSConnection(
            "localhost", percore.port, timeout=10, context=client_context()
        )
        assert loops_answering(connection) == {0, 1}


@pytest.mark.parametrize("server", ["percore", "uvicorn"])
def test_a_websocket_over_tls_sees_wss(serve, server):
    running = serve_websockets(serve, server, STARLETTE, *HTTPS)
    socket = connect_websocket(running.port, "/ws-whoami", tls=client_context())
    assert socket.status == 101
    assert json.loads(socket.receive()[1])["scheme"] == "wss"


def test_only_http_1_1_is_offered_in_alpn(serve):
    server = serve(NATIVE, "--loops", "1", *HTTPS)
    context = client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(b"GET /gil HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")


def test_clients_without_a_handshake_lose_only_their_connection(serve):
    metrics_port = free_port()
    server = serve(
        NATIVE, "--loops", "1", "--header-timeout", "0.5", "--metrics-port", str(metrics_port), *HTTPS
    )
    errors = lambda: total(scrape(metrics_port), "percore_connection_errors_total")  # noqa: E731
    assert wait_for(lambda: errors() == 1)  # the fixture's readiness probe: connected, closed, no handshake
    # Plain HTTP on the HTTPS port: no HTTP answer, the connection ends.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        plain.sendall(b"GET /gil HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        while chunk := plain.recv(4096):
            received += chunk
        assert not received.startswith(b"HTTP/")
    # A client that connects and says nothing is closed after the header timeout, not held forever.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
        started = time.monotonic()
        try:
            assert silent.recv(4096) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 3
    # A client that does not trust the certificate fails its own handshake.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    # Meanwhile everyone else is served, and the three failed handshakes are counted.
    assert https_json(server.port, "/gil")["gil_enabled"] in (True, False)
    assert wait_for(lambda: errors() == 1 + 3)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--ssl-certfile", CERTFILE), ("--ssl-certfile", "--ssl-keyfile", "both")),
        (("--ssl-certfile", str(CERTS / "missing.crt"), "--ssl-keyfile", KEYFILE), ("missing.crt",)),
        (("--ssl-certfile", KEYFILE, "--ssl-keyfile", KEYFILE), ("--ssl-certfile", "no PEM certificate")),
        (("--ssl-certfile", CERTFILE, "--ssl-keyfile", CERTFILE), ("--ssl-keyfile", "no PEM private key")),
        (
            ("--ssl-certfile", CERTFILE, "--ssl-keyfile", str(CERTS / "encrypted.key")),
            ("encrypted.key", "encrypted"),
        ),
        (
            ("--ssl-certfile", CERTFILE, "--ssl-keyfile", str(CERTS / "other.key")),
            ("other.key", "does not go with"),
        ),
    ],
    ids=["keyfile-missing", "no-such-file", "not-a-certificate", "not-a-key", "encrypted-key", "wrong-key"],
)
def test_bad_certificate_options_fail_with_one_clear_line(args, fragments):
    assert_one_clear_line(run_cli("serve", NATIVE, *args), *fragments)


def test_the_banner_says_https(serve):
    server = serve(NATIVE, "--loops", "1", *HTTPS)
    assert https_json(server.port, "/gil")
    # Logged once the loops accept, so possibly after this first answer: waited for, not raced by stop().
    banner = f"https://127.0.0.1:{server.port}"
    assert wait_for(lambda: banner in server.read_stderr(), timeout=60), server.read_stderr()
