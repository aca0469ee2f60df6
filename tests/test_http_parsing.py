"""Request parsing held against h11, the parser behind uvicorn.

The Host rule (RFC 9112 §3.2): an HTTP/1.1 request without a Host header, or any request with two, gets
400 and the connection closes; HTTP/1.0 may omit it. Over raw sockets, for native and ASGI apps, beside
uvicorn.

Differential parsing: every request of tests/http_mutations.py's corpus (and a few Host variants) goes to
h11 as a server and to percore over a socket (an echo app that reports each request it got). Smuggling
lives where two parsers disagree, so both must see the same requests — as many, with the same method,
target and body — and refuse a Host violation with 400. Where percore deliberately differs from h11,
`STRICTER` and `LENIENT` below say so, case by case; nothing else may differ."""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import h11
import pytest

from .apps.hardening_apps import fingerprint
from .http_mutations import SEEDS, cases, exchange, response_heads

# ---------------------------------------------------------------------------------------------- Host rule

SERVERS = {
    "percore-native": ("percore", "tests.apps.native_api:api", "/users/7"),
    "percore-asgi": ("percore", "tests.apps.fastapi_app:app", "/json"),
    "uvicorn": ("uvicorn", "tests.apps.fastapi_app:app", "/json"),
}

HOST_RULE = [
    # (request head after the request line, HTTP version, status)
    (b"", b"HTTP/1.1", 400),
    (b"Host: a\r\nHost: b\r\n", b"HTTP/1.1", 400),
    (b"Host: a\r\nHost: a\r\n", b"HTTP/1.1", 400),
    (b"Host: a\r\nhost: b\r\n", b"HTTP/1.1", 400),
    (b"Host: a\r\nHost: b\r\n", b"HTTP/1.0", 400),
    (b"", b"HTTP/1.0", 200),
    (b"Host: a\r\n", b"HTTP/1.1", 200),
    (b"Host: \r\n", b"HTTP/1.1", 200),  # an empty Host is how a client says the target has no authority
]


def statuses_on_one_connection(port: int, data: bytes) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(data)
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_http_1_1_needs_exactly_one_host_header_as_under_uvicorn(serve, kind):
    server_name, app, path = SERVERS[kind]
    loops = ["--loops", "1"] if server_name == "percore" else []
    server = serve(app, *loops, "--log-level", "warning", server=server_name)
    for headers, version, status in HOST_RULE:
        request = b"GET %s %s\r\n%s" % (path.encode(), version, headers)
        # A good request pipelined behind: answered only if the first one was good (a malformed request
        # closes the connection; HTTP/1.0 closes it anyway).
        following = b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode()
        answered = statuses_on_one_connection(server.port, request + b"\r\n" + following)
        expected = [status] if status == 400 or version == b"HTTP/1.0" else [status, 200]
        assert answered == expected, (headers, version)


# ---------------------------------------------------------------------------------------- differential

# The largest request head percore takes (runtime/src/server.rs MAX_HEADER_SIZE), given to h11 as its own.
MAX_HEAD = 64 * 1024
READ = 4096


@dataclass
class View:
    """What one parser made of the bytes: the requests it took whole, and how it ended."""

    requests: list[dict]
    heads: list[h11.Request]  # h11 only: the requests' heads, for `STRICTER`
    refused: int | None = None  # percore: the status it refused the next request with
    error: str = ""  # h11: why it refused the next request


def h11_view(data: bytes) -> View:
    """h11 as a server that answers each request 200 (so it reads on, as uvicorn does). The bytes arrive
    in socket-sized reads: h11 applies its head size limit only to a head still incomplete."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    reads = [data[at : at + READ] for at in range(0, len(data), READ)]
    view, head, body = View([], []), None, b""
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as error:
            view.error = str(error)
            return view
        if event is h11.NEED_DATA and reads:
            connection.receive_data(reads.pop(0))
            continue
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return view  # the rest (if any) is an incomplete request: neither parser has it
        if isinstance(event, h11.Request):
            head, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            view.requests.append(fingerprint(head.method, origin_form(head.target), body))
            view.heads.append(head)
            connection.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            connection.send(h11.EndOfMessage())
            if connection.our_state is h11.MUST_CLOSE:
                return view
            connection.start_next_cycle()


def origin_form(target: bytes) -> bytes:
    """The target as an ASGI scope has it (`raw_path` and `query_string`): no scheme and authority (an
    absolute-form target), no fragment."""
    target = target.partition(b"#")[0]
    absolute = re.match(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?]*", target)
    if absolute:
        target = target[absolute.end() :]
        target = target if target.startswith(b"/") else b"/" + target
    return target


def percore_view(port: int, data: bytes, idle: float = 0.25) -> View:
    """What percore answered; the client half-closes after `idle` seconds of silence (http_mutations)."""
    reply = exchange(port, data, timeout=15, idle=idle)
    view = View([], [])
    for status, fields in response_heads(reply.data, heads=b"HEAD" in data, cut_ok=reply.reset):
        assert status < 500, f"{status} for {data[:300]!r}"
        assert view.refused is None, f"a response after a refusal: {reply.data[:500]!r}"
        if "x-echo" not in fields:
            view.refused = status
            continue
        seen = json.loads(base64.b64decode(fields["x-echo"]))
        if seen.pop("complete"):
            view.requests.append(seen)
        else:  # its body never arrived whole (the client half-closed): h11 does not count it either
            view.refused = 0
    return view


# Where percore refuses a request h11 takes: (why, which requests (h11's view of the head, and the raw
# bytes: h11 merges a Content-Length list), percore's status).
STRICTER: list[tuple[str, Callable[[h11.Request, bytes], bool], int]] = [
    # RFC 9110 §8.6 lets a recipient take a list of equal lengths as one; hyper refuses it (h11 takes it).
    ("a Content-Length list", lambda head, data: re.search(rb"(?im)^content-length:[^\n]*,", data), 400),
    # RFC 9110 §5.5: a field value holds visible characters, spaces, tabs and obs-text; h11 takes the
    # other control characters (all but NUL and whitespace) too.
    (
        "a control character in a field value",
        lambda head, data: any(re.search(rb"[\x01-\x08\x0e-\x1f\x7f]", value) for _, value in head.headers),
        400,
    ),
    # RFC 9112 §5.2 lets a server refuse obs-fold (a field line continued on the next); h11 unfolds it.
    (
        "obs-fold",
        lambda head, data: re.search(rb"\n[ \t]", re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]),
        400,
    ),
    # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing; h11 reads it chunked.
    (
        "Transfer-Encoding in HTTP/1.0",
        lambda head, data: head.http_version == b"1.0" and has(head, FRAMINGS[1]),
        400,
    ),
    # hyper speaks HTTP/1.0 and 1.1 only; h11 takes any HTTP/d.d.
    (
        "an HTTP version other than 1.0 and 1.1",
        lambda head, data: head.http_version not in (b"1.0", b"1.1"),
        400,
    ),
    # hyper takes at most 100 header lines (431); h11 bounds only the size of the head.
    ("more than 100 header lines", lambda head, data: len(head.headers) > 100, 431),
    # RFC 9112 §3.2: a request-target is a path, an absolute URI, `*`, or (for CONNECT, which percore does
    # not proxy) an authority; h11 takes any visible characters (server.rs `head_error`).
    (
        "a target that is no path",
        lambda head, data: not re.match(rb"/|\*$|[A-Za-z][A-Za-z0-9+.-]*://", head.target),
        400,
    ),
]

# Where percore takes a request h11 refuses: (why, h11's error, the request percore took).
LENIENT: list[tuple[str, Callable[[str, dict], bool]]] = [
    # RFC 9112 §2.2: a server SHOULD ignore empty lines before a request line; hyper does, h11 does not.
    ("empty lines before the request", lambda error, request: error == "no request line received"),
    # Raw bytes >= 0x80 in the target (clients do send raw UTF-8): hyper keeps them, literally, in the
    # path (docs/limits.md); h11 refuses them. Neither moves a request boundary.
    (
        "raw non-ASCII bytes in the target",
        lambda error, request: (
            error.startswith("illegal request line") and any(ord(c) >= 0x80 for c in request["target"])
        ),
    ),
]


# h11's reasons for refusing a request under the Host rule.
HOST_ERRORS = {"Missing mandatory Host: header", "Found multiple Host: headers"}


FRAMINGS = (b"content-length", b"transfer-encoding")


def has(head: h11.Request, name: bytes) -> bool:
    return any(n == name for n, _ in head.headers)


def disagreement(data: bytes, theirs: View, ours: View) -> str | None:
    """Why the two views disagree, or None."""
    host_error = theirs.error in HOST_ERRORS
    if ours.requests == theirs.requests:
        if host_error and ours.refused != 400:
            return f"h11 refused ({theirs.error}); percore answered {ours.refused}, not 400"
        return None
    taken = len(ours.requests)
    if taken < len(theirs.requests) and ours.requests == theirs.requests[:taken]:
        head = theirs.heads[taken]
        if any(applies(head, data) and ours.refused == status for _why, applies, status in STRICTER):
            return None
        # RFC 9112 §6.1: after a request with both Content-Length and Transfer-Encoding a server MUST
        # close the connection (what follows may be smuggled); percore does, h11 reads on.
        if taken and ours.refused is None and all(has(theirs.heads[taken - 1], n) for n in FRAMINGS):
            return None
    taken = len(theirs.requests)
    if taken < len(ours.requests) and theirs.requests == ours.requests[:taken] and theirs.error:
        if any(applies(theirs.error, ours.requests[taken]) for _why, applies in LENIENT):
            return None
    return f"h11 took {theirs.requests} ({theirs.error or 'no error'}); percore took {ours.requests} (refused {ours.refused})"


HOSTLESS = b"GET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
HOST_VARIANTS = [
    b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET /a HTTP/1.0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
    # The second request of a pipeline breaks the rule: the first is served, the second refused.
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
    # A body that looks like a request breaking the rule is just a body.
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(HOSTLESS), HOSTLESS)
    + b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]


def test_percore_and_h11_see_the_same_requests_in_the_same_bytes(serve):
    server = serve(
        "tests.apps.hardening_apps:echo",
        "--loops",
        "2",
        "--routing",
        "round-robin",
        "--log-level",
        "critical",
    )
    corpus = [("host", data) for data in HOST_VARIANTS]
    corpus += cases(seed=20261206, count=300, seeds=SEEDS["native"] + SEEDS["asgi"])
    failures, compared, refused_host = [], 0, 0
    for name, data in corpus:
        theirs = h11_view(data)
        compared += len(theirs.requests)
        refused_host += theirs.error in HOST_ERRORS
        why = disagreement(data, theirs, percore_view(server.port, data))
        if why:  # once more with time to answer: hyper drops a request whose client half-closed before it
            why = disagreement(data, theirs, percore_view(server.port, data, idle=3))
        if why:
            failures.append(f"{name}: {data[:300]!r}\n    {why}")
    assert not failures, f"{len(failures)} disagreements:\n" + "\n".join(failures[:10])
    # The corpus reached both sides: requests both parsers took, and Host violations both refused.
    assert compared > 100 and refused_host >= 4, (compared, refused_host)
    assert server.stop() == 0
    assert "panicked" not in server.stderr, server.stderr
