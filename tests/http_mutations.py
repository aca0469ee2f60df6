"""A seeded mutation engine for raw HTTP/1.1 requests, and the oracle that judges a server's replies.

`cases(seed, count, seeds)` yields `(mutator, request_bytes)`; the same seed always yields the same
cases. `judge(port, data)` sends one case on a fresh connection, half-closes it, reads until the server
closes, and checks what came back: a sequence of well-formed HTTP/1.x responses (the last one may be cut
only if the server reset the connection), none of them a 5xx, within a timeout.

tests/test_fuzz.py runs a few hundred cases per app in CI. For a longer run against any app:

    python -m tests.http_mutations tests.apps.native_api:api --seconds 600 [--seed 7] [--loops 2]
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    method: bytes
    target: bytes
    version: bytes = b"HTTP/1.1"
    # `Connection: close`: the server closes once it has answered, so the end of the reply is known.
    headers: tuple[tuple[bytes, bytes], ...] = ((b"Host", b"fuzz"), (b"Connection", b"close"))
    body: bytes = b""
    eol: bytes = b"\r\n"

    def encode(self) -> bytes:
        head = [b" ".join((self.method, self.target, self.version))]
        head += [name + b": " + value for name, value in self.headers]
        return self.eol.join(head) + self.eol + self.eol + self.body

    def with_header(self, name: bytes, value: bytes) -> Request:
        return replace(self, headers=(*self.headers, (name, value)))

    def without(self, *names: bytes) -> Request:
        lower = {n.lower() for n in names}
        return replace(self, headers=tuple(h for h in self.headers if h[0].lower() not in lower))


def get(target: str, *headers: tuple[bytes, bytes]) -> Request:
    return Request(b"GET", target.encode(), headers=(*Request.headers, *headers))


def post(target: str, body: bytes, content_type: bytes = b"application/json") -> Request:
    return Request(
        b"POST",
        target.encode(),
        headers=(
            *Request.headers,
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
        ),
        body=body,
    )


def chunked(body: bytes, sizes: tuple[int, ...] = (3, 5)) -> bytes:
    out, rest = b"", body
    for size in sizes:
        piece, rest = rest[:size], rest[size:]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    if rest:
        out += b"%x\r\n%s\r\n" % (len(rest), rest)
    return out + b"0\r\n\r\n"


# ---------------------------------------------------------------------------------------------- mutators

Mutator = Callable[[random.Random, Request], bytes]
MUTATORS: dict[str, Mutator] = {}


def mutator(function: Mutator) -> Mutator:
    MUTATORS[function.__name__.replace("_", "-")] = function
    return function


def _pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


@mutator
def request_line(rng: random.Random, r: Request) -> bytes:
    variants = [
        lambda: replace(r, method=b"G\x00T"),
        lambda: replace(r, method=r.method.lower()),
        lambda: replace(r, method=b"GET\tX"),
        lambda: replace(r, method=b"\xff\xfe"),
        lambda: replace(r, method=b""),
        lambda: replace(r, method=b"X" * 300),
        lambda: replace(r, version=b""),
        lambda: replace(
            r, version=_pick(rng, [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1", b"HTTPS/1.1"])
        ),
        lambda: replace(r, version=_pick(rng, [b"http/1.1", b"HTTP/1.1x", b"HTTP/01.1", b"HTTP/1.10"])),
        lambda: replace(r, target=b""),
        lambda: replace(r, target=b"*"),
        lambda: replace(r, target=b"http://fuzz" + r.target),
        lambda: replace(r, target=b"fuzz:80"),
        lambda: replace(r, target=r.target + b" " + r.target),
        lambda: replace(r, target=b"/" + b"a" * rng.choice([8_000, 70_000])),
    ]
    data = _pick(rng, variants)().encode()
    if rng.random() < 0.2:
        data = data.replace(b" ", b"  ", 1)
    return data


@mutator
def header_bytes(rng: random.Random, r: Request) -> bytes:
    bad = [
        (b"X-Nul", b"a\x00b"),
        (b"X-Cr", b"a\rb"),
        (b"X-Lf", b"a\nb"),
        (b"X-Del", b"a\x7fb"),
        (b"X-High", b"caf\xc3\xa9 \xff\xfe"),
        (b"X\x00Name", b"v"),
        (b"X Name", b"v"),
        (b"X-Name ", b"v"),
        (b"X\xffName", b"v"),
        (b"", b"empty-name"),
        (b"X-Fold", b"a\r\n folded"),
        (b"Cookie", b'session=\xff\xfe; a="b; c'),
        (b"X-Token", b"\x80\x81"),
        (b"Host", b"second-host"),
    ]
    name, value = _pick(rng, bad)
    request = r.with_header(name, value)
    data = request.encode()
    if rng.random() < 0.3:
        # A header line without a colon, or bare LF / CR line endings.
        data = _pick(
            rng,
            [
                data.replace(b"\r\n\r\n", b"\r\nNo colon here\r\n\r\n", 1),
                data.replace(b"\r\n", b"\n"),
                data.replace(b"\r\n", b"\r", 1),
            ],
        )
    return data


@mutator
def content_length(rng: random.Random, r: Request) -> bytes:
    body = r.body or b'{"name": "x", "price": 1}'
    base = replace(r.without(b"Content-Length", b"Transfer-Encoding"), method=b"POST", body=body)
    n = len(body)
    values = [
        [b"99999999999999999999999"],
        [b"18446744073709551616"],
        [b"-1"],
        [b"+%d" % n],
        [b"0x%x" % n],
        [b" %d " % n],
        [b"%d,%d" % (n, n)],
        [b"%d" % n, b"%d" % n],
        [b"%d" % n, b"%d" % (n + 1)],
        [b""],
        [b"abc"],
        [b"%d" % (n + 10)],  # promises more than it sends: the client then half-closes
        [b"%d" % max(n - 5, 0)],  # sends more than it declares: the rest is a (broken) next request
        [b"1" * 64],
    ]
    for value in _pick(rng, values):
        base = base.with_header(b"Content-Length", value)
    return base.encode()


@mutator
def cl_and_te(rng: random.Random, r: Request) -> bytes:
    body = r.body or b'{"name": "x"}'
    base = replace(r.without(b"Content-Length", b"Transfer-Encoding"), method=b"POST")
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: fuzz\r\n\r\n"
    te = _pick(
        rng, [b"chunked", b"Chunked", b" chunked", b"chunked, identity", b"gzip, chunked", b"xchunked"]
    )
    if rng.random() < 0.5:
        framed = chunked(body) + smuggled
        request = base.with_header(b"Content-Length", b"%d" % len(framed)).with_header(
            b"Transfer-Encoding", te
        )
    else:
        framed = chunked(body)
        request = base.with_header(b"Transfer-Encoding", te).with_header(b"Content-Length", b"%d" % len(body))
    return replace(request, body=framed).encode()


@mutator
def transfer_encoding(rng: random.Random, r: Request) -> bytes:
    body = r.body or b'{"name": "x"}'
    base = replace(r.without(b"Content-Length", b"Transfer-Encoding"), method=b"POST")
    te_headers = _pick(
        rng,
        [
            [b"chunked"],
            [b"chunked"],
            [b"chunked", b"chunked"],
            [b"identity"],
            [b"chunked, gzip"],
            [b"gzip"],
            [b"chunked;q=1"],
        ],
    )
    for value in te_headers:
        base = base.with_header(b"Transfer-Encoding", value)
    good = chunked(body)
    bodies = [
        good,
        b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        b"-1\r\n" + body + b"\r\n0\r\n\r\n",
        b"fffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n",
        b"%x\r\n%s0\r\n\r\n" % (len(body), body),  # no CRLF after the data
        b"%x \r\n%s\r\n0\r\n\r\n" % (len(body), body),
        b"%x;ext=\x00\r\n%s\r\n0\r\n\r\n" % (len(body), body),
        b"%x\r\n%s\r\n" % (len(body), body),  # no last chunk
        b"%x\r\n%s\r\n0\r\nX-Trailer: \xff\x00\r\n\r\n" % (len(body), body),
        b"%x\n%s\n0\n\n" % (len(body), body),
        b"%x\r\n%s\r\n" % (len(body) + 3, body),  # shorter than declared
        b"0\r\n\r\n" + b"junk after the end",
    ]
    request = replace(base, body=_pick(rng, bodies))
    if rng.random() < 0.15:
        request = replace(request, version=b"HTTP/1.0")
    return request.encode()


@mutator
def nul_bytes(rng: random.Random, r: Request) -> bytes:
    data = bytearray(r.encode())
    for _ in range(rng.randint(1, 3)):
        data.insert(rng.randrange(len(data) + 1), 0)
    return bytes(data)


@mutator
def path(rng: random.Random, r: Request) -> bytes:
    path_part, _, query = r.target.partition(b"?")
    junk = _pick(
        rng,
        [
            b"/\xff\xfe",
            b"/caf\xc3\xa9",
            b"/%",
            b"/%z",
            b"/%zz",
            b"/%+1",
            b"/%00",
            b"/%C3%28",
            b"/%ff%fe",
            b"/..%2f..%2fetc%2fpasswd",
            b"/../../",
            b"//",
            b"/\\",
            b"/a#frag",
            b"/" + b"%41" * 3000,
            b";params",
        ],
    )
    target = path_part + junk if rng.random() < 0.5 else junk
    if query or rng.random() < 0.5:
        target += b"?" + _pick(
            rng,
            [
                query + b"&q=%zz",
                b"q=%ff%fe&limit=%2B1",
                b"=&&=&q",
                b"q=" + b"\xff" * 3,
                b"id=1&id=%",
                b"q=%00",
            ],
        )
    return replace(r, target=target).encode()


@mutator
def truncate(rng: random.Random, r: Request) -> bytes:
    data = r.encode()
    return data[: rng.randrange(1, len(data))]


@mutator
def pipeline(rng: random.Random, r: Request) -> bytes:
    data, first = r.encode(), r.without(b"Connection").encode()  # the server reads past a kept-alive one
    junk = _pick(
        rng, [b"\x00\xff junk\r\n\r\n", b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n", b"\r\n\r\n\r\n", data[:10]]
    )
    return _pick(
        rng, [first + junk, first + first + junk, junk + data, first + first + data[: len(data) // 2]]
    )


@mutator
def many_headers(rng: random.Random, r: Request) -> bytes:
    if rng.random() < 0.5:
        request = r
        for i in range(rng.choice([99, 101, 200])):
            request = request.with_header(b"X-H%d" % i, b"v")
        return request.encode()
    return r.with_header(b"X-Big", b"a" * rng.choice([60_000, 70_000, 200_000])).encode()


@mutator
def random_bytes(rng: random.Random, r: Request) -> bytes:
    data = bytearray(r.encode())
    for _ in range(rng.randint(1, 8)):
        op, at = rng.random(), rng.randrange(len(data))
        if op < 0.4:
            data[at] = rng.randrange(256)
        elif op < 0.7:
            data.insert(at, rng.randrange(256))
        elif len(data) > 1:
            del data[at]
    return bytes(data)


def cases(seed: int, count: int, seeds: list[Request]) -> Iterator[tuple[str, bytes]]:
    """`count` mutated requests, the same ones for the same seed. Every mutator is used in turn, on a
    random seed request; one in five is mutated again byte by byte."""
    rng = random.Random(seed)
    names = sorted(MUTATORS)
    for i in range(count):
        name = names[i % len(names)]
        data = MUTATORS[name](rng, _pick(rng, seeds))
        if rng.random() < 0.2 and name != "random-bytes" and data:
            mutated = bytearray(data)
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data, name = bytes(mutated), name + "+byte"
        yield name, data


# ---------------------------------------------------------------------------------------------- oracle


@dataclass
class Reply:
    data: bytes
    reset: bool = False
    statuses: list[int] = field(default_factory=list)


class BadReply(AssertionError):
    pass


def exchange(port: int, data: bytes, timeout: float, idle: float = 0.25) -> Reply:
    """Sends `data` on a fresh connection and reads until the server closes. Once the server has been
    silent for `idle` seconds (it waits for the rest of a truncated request, or keeps the connection
    alive) the client half-closes: from then on the server must close within `timeout`."""
    deadline = time.monotonic() + timeout
    reply = Reply(b"")
    half_closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(data)
        except OSError:  # EPIPE, ECONNRESET: the server answered (a 431, a 400) and closed early
            reply.reset = half_closed = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BadReply(f"no close within {timeout}s; received {reply.data[:300]!r}")
            conn.settimeout(remaining if half_closed else min(idle, remaining))
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                if half_closed:
                    raise BadReply(f"no close within {timeout}s; received {reply.data[:300]!r}") from None
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    reply.reset = True
                    break
                half_closed = True
                continue
            except OSError:  # ECONNRESET
                reply.reset = True
                break
            if not chunk:
                break
            reply.data += chunk
    return reply


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


def parse_responses(out: bytes, heads: bool, cut_ok: bool) -> list[int]:
    """The statuses of the responses in `out`, which must hold nothing else. A response to HEAD declares
    a length but has no body: with `heads`, a response directly followed by another (or by the end) is
    taken as bodiless. With `cut_ok` (the connection was reset) the last response may be incomplete."""
    return [status for status, _ in response_heads(out, heads, cut_ok)]


def response_heads(out: bytes, heads: bool, cut_ok: bool) -> list[tuple[int, dict[str, str]]]:
    """As `parse_responses`, with each response's header fields (lower-case names; the last of a name)."""
    statuses: list[tuple[int, dict[str, str]]] = []
    rest = out
    while rest:
        line = _STATUS_LINE.match(rest)
        end = rest.find(b"\r\n\r\n")
        if line is None or end < 0:
            if cut_ok and (end < 0 and b"HTTP/1.1 ".startswith(rest[:9])):
                break
            raise BadReply(f"not an HTTP response: {rest[:300]!r}")
        status = int(line.group(1))
        head = rest[: end + 2].decode("latin-1").split("\r\n")[1:]
        fields = [(n.lower(), sep, v) for n, sep, v in (h.partition(":") for h in head if h)]
        statuses.append((status, {name: v.strip() for name, _, v in fields}))
        if any(not sep or not name or name != name.strip() for name, sep, _ in fields):
            raise BadReply(f"malformed response header in {rest[: end + 4]!r}")
        lengths = [v.strip() for n, _, v in fields if n == "content-length"]
        te = [v.strip().lower() for n, _, v in fields if n == "transfer-encoding"]
        if len(lengths) > 1 or (lengths and te):
            raise BadReply(f"ambiguous response framing: {rest[: end + 4]!r}")
        rest = rest[end + 4 :]
        if 100 <= status < 200 or status in (204, 304):
            continue
        if heads and (not rest or rest.startswith(b"HTTP/1.")):
            continue
        if te:
            if te != ["chunked"]:
                raise BadReply(f"unexpected transfer-encoding {te}")
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    if cut_ok:
                        return statuses
                    raise BadReply("truncated chunked response")
                size = int(rest[:line_end].split(b";")[0], 16)
                if len(rest) < line_end + 2 + size + 2:
                    if cut_ok:
                        return statuses
                    raise BadReply("truncated chunk")
                rest = rest[line_end + 2 + size + 2 :]
                if size == 0:
                    break
        elif lengths:
            length = int(lengths[0])
            if len(rest) < length:
                if cut_ok:
                    return statuses
                raise BadReply(f"body shorter than content-length {length}: {rest[:100]!r}")
            rest = rest[length:]
        else:
            rest = b""  # delimited by the close
    return statuses


def judge(port: int, data: bytes, timeout: float = 15.0) -> list[int]:
    """One case: the statuses the server answered with. Raises BadReply for anything a client could not
    rely on: a malformed or truncated reply, a 5xx, or no close within `timeout`."""
    reply = exchange(port, data, timeout)
    statuses = parse_responses(reply.data, heads=b"HEAD" in data, cut_ok=reply.reset)
    server_errors = [s for s in statuses if s >= 500]
    if server_errors:
        raise BadReply(f"server error {server_errors}; reply {reply.data[:500]!r}")
    return statuses


# ---------------------------------------------------------------------------------------------- seeds

NATIVE_SEEDS = [
    get("/search?q=hello+world&limit=5&tags=a&tags=b%26c"),
    get("/ids?id=1&id=2"),
    get("/typed/42/0.5/true/12345678-1234-5678-1234-567812345678"),
    get("/headers", (b"X-Token", b"secret"), (b"Cookie", b"session=abc; theme=dark")),
    get("/users/7"),
    Request(b"DELETE", b"/users/7"),
    Request(b"HEAD", b"/users/7"),
    post("/items", b'{"name": "pen", "price": 1.5, "tags": ["a"]}'),
    post("/raw", b'{"a": [1, 2, {"b": null}]}'),
    replace(
        post("/raw", b"").without(b"Content-Length").with_header(b"Transfer-Encoding", b"chunked"),
        body=chunked(b'{"chunked": true}'),
    ),
    get("/nope"),
]

ASGI_SEEDS = [
    get("/json"),
    get("/items/5?q=x&offset=1&limit=2"),
    get("/missing/3"),
    get("/teapot"),
    post("/items", b'{"name": "pen", "price": 1.5}'),
    post("/form", b"name=pen&count=3", b"application/x-www-form-urlencoded"),
    Request(b"HEAD", b"/json"),
    replace(
        post("/items", b"").without(b"Content-Length").with_header(b"Transfer-Encoding", b"chunked"),
        body=chunked(b'{"name": "pen", "price": 2}'),
    ),
]

SEEDS = {"native": NATIVE_SEEDS, "asgi": ASGI_SEEDS}


def main() -> None:  # pragma: no cover - the long run, by hand
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import ServerProcess

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("app", help="e.g. tests.apps.native_api:api or tests.apps.fastapi_app:app")
    parser.add_argument("--seeds", choices=sorted(SEEDS), help="seed requests (default: by app)")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loops", default="2")
    args = parser.parse_args()
    seeds = SEEDS[args.seeds or ("native" if "native" in args.app else "asgi")]
    # Logging off: tracebacks would fill the stderr pipe nobody reads until the end (a Rust panic still prints).
    server = ServerProcess(
        args.app, "--loops", args.loops, "--routing", "round-robin", "--log-level", "critical"
    ).start()
    done, started, failures = 0, time.monotonic(), 0
    try:
        for name, data in cases(args.seed, 10**9, seeds):
            if time.monotonic() - started > args.seconds:
                break
            try:
                judge(server.port, data)
            except BadReply as error:
                failures += 1
                print(f"FAIL {name}: {data[:200]!r}\n  {error}", flush=True)
            done += 1
            if done % 500 == 0:
                alive = server.process.poll() is None and server.get("/nope").status == 404
                print(f"{done} cases, {failures} failures, server {'alive' if alive else 'DOWN'}", flush=True)
                if not alive:
                    break
    finally:
        code = server.stop()
    crashed = "panicked" in server.stderr
    print(
        f"{done} cases in {time.monotonic() - started:.0f}s, {failures} failures, exit {code}, panics: {crashed}"
    )
    raise SystemExit(1 if failures or code or crashed else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
