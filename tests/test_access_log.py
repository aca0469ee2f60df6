"""The access log over real sockets: one escaped, capped line per request whatever the request carried, and a
queue bounded in bytes whose dropped lines are counted truly (docs/observability.md, docs/limits.md)."""

from __future__ import annotations

import os
import re
import select
import socket
import time

from .conftest import free_port
from .test_metrics import scrape, value

APP = "tests.apps.runtime_app:api"
COMMON_LOG = re.compile(
    r'^(\S+) - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "(\S+) (\S+) HTTP/1\.1" (\d{3}) (\d+|-) \d+us$'
)


def exchange(port: int, head: bytes) -> bytes:
    """Sends one raw request head and reads the response to the end (the request asks to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(head)
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    return reply


def count_responses(raw: socket.socket, marker: bytes, wanted: int) -> int:
    """Reads until `wanted` responses starting with `marker` arrived (a marker may span two reads)."""
    buffer, seen = b"", 0
    while seen < wanted:
        chunk = raw.recv(65536)
        assert chunk, f"the connection closed after {seen} responses"
        buffer += chunk
        seen += buffer.count(marker)
        last = buffer.rfind(marker)
        buffer = buffer[max(last + len(marker) if last >= 0 else 0, len(buffer) - len(marker) + 1) :]
    return seen


def test_each_request_is_one_escaped_capped_line_that_cannot_be_forged(serve):
    server = serve(APP, "--loops", "1", "--access-log", "--forwarded-allow-ips", "127.0.0.1")
    # Bytes a request line and header may carry that would split a line (U+2028 and U+0085 are line breaks
    # to Python's splitlines and many log viewers), quote a field, or look like a second entry.
    forged = '"\\\u2028\u0085%0D%0A"'.encode() + b"x" * 60_000
    huge = exchange(
        server.port,
        b"GET /log/" + forged + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert huge.startswith(b"HTTP/1.1 404"), huge[:200]
    spoofed = exchange(
        server.port,
        b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b'X-Forwarded-For: 198.51.100.1"\t\x85 - - [x] \xe2\x80\xa8 "GET /admin\r\n\r\n',
    )
    assert spoofed.startswith(b"HTTP/1.1 200"), spoofed[:200]
    long_client = exchange(
        server.port,
        b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Forwarded-For: "
        + b"c" * 5000
        + b"\r\n\r\n",
    )
    assert long_client.startswith(b"HTTP/1.1 200")
    assert server.stop() == 0
    log = [line for line in server.stderr.splitlines() if " - - [" in line]
    assert len(log) == 3, server.stderr[-3000:]
    for line in log:
        assert line.isascii() and line.isprintable(), line
        assert len(line) < 2048 + 4 * 20 + 400, len(line)
        assert COMMON_LOG.match(line), line
    client, method, target, status, _ = COMMON_LOG.match(log[0]).groups()
    assert (client, method, status) == ("127.0.0.1", "GET", "404")
    assert target.startswith("/log/\\x22\\x5C\\xE2\\x80\\xA8\\xC2\\x85%0D%0A\\x22xxx")
    sent = len("/log/") + len(forged)
    kept = 2048 - len("/log/") - len('"\\\u2028\u0085%0D%0A"'.encode())
    assert target.endswith("x" * kept + f"...[+{sent - 2048}B]"), target[-80:]
    client, _, target, status, _ = COMMON_LOG.match(log[1]).groups()
    spoof = "198.51.100.1\\x22\\x09\\x85\\x20-\\x20-\\x20[x]\\x20\\xE2\\x80\\xA8\\x20\\x22GET\\x20/admin"
    assert (client, target, status) == (spoof, "/whoami", "200")
    assert COMMON_LOG.match(log[2]).group(1) == "c" * 256 + "...[+4744B]"


def test_a_stalled_stderr_drops_lines_past_the_byte_budget_and_counts_every_one(serve):
    """stderr is a pipe nobody reads: the writer blocks once the pipe is full, lines queue up to 8 MiB and
    the rest are dropped — with 2 KiB targets that is a few thousand lines, far fewer than the old 65,536-line
    bound. Then the pipe is drained: every request is either a line or in a `dropped N lines` count, and the
    metric says the same."""
    metrics_port = free_port()
    server = serve(APP, "--loops", "1", "--access-log", "--metrics-port", str(metrics_port), stderr="pipe")
    requests = 6000
    head = b"GET /" + b"t" * 2040 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        answered = 0
        for start in range(0, requests, 100):
            raw.sendall(head * 100)  # pipelined: the 100 answers are read before sending more
            answered += count_responses(raw, b"HTTP/1.1 404 ", start + 100 - answered)
    dropped = value(scrape(metrics_port), "percore_access_log_dropped_lines_total")
    assert dropped > 0, "nothing was dropped: the queue is not bounded in bytes"
    stream = server.process.stderr.fileno()
    text = b""
    deadline = time.monotonic() + 120
    while True:
        if select.select([stream], [], [], 0.5)[0]:
            text += os.read(stream, 1 << 20)
        logged = text.count(b'"GET /ttt')
        reported = sum(int(n) for n in re.findall(rb"access log dropped (\d+) lines", text))
        if logged + reported == requests:
            break
        assert time.monotonic() < deadline, (logged, reported, dropped)
    assert reported == dropped == value(scrape(metrics_port), "percore_access_log_dropped_lines_total")
