"""`api.mount("/static", percore.StaticFiles(...))`: files served from Rust over real sockets, side by side
with Starlette's StaticFiles on uvicorn for the headers both send (tests/apps/static_app.py,
tests/apps/static_starlette.py); the deliberate differences are in docs/native-api.md ("Static files")."""

from __future__ import annotations

import gzip
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import percore
import pytest
from percore.testing import TestClient

from tests.conftest import Client, ServerProcess

APP = "tests.apps.static_app:api"
STARLETTE = "tests.apps.static_starlette:app"
SECRET = b"the secret outside the served directory\n"
TEXT = b"hello, static world\n"
BIG = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: streamed in chunks
JS = b"console.log('plain');\n" * 20
GZ = gzip.compress(JS, mtime=0)  # no timestamp: the same bytes at collection and in the tree


def make_tree(base: Path) -> Path:
    """base/secret.txt outside; base/public/ served, with symlinks pointing in and out."""
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "public"
    (root / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "a.txt").write_bytes(TEXT)
    (root / "with space.txt").write_bytes(b"spaced\n")
    (root / "data.json").write_bytes(b'{"a": 1}')
    (root / "page.html").write_bytes(b"<p>page</p>")
    (root / "style.css").write_bytes(b"p {}")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "logo.svg").write_bytes(b"<svg/>")
    (root / "blob.unknownext").write_bytes(b"?")
    (root / "empty.txt").write_bytes(b"")
    (root / "big.bin").write_bytes(BIG)
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "docs" / "index.html").write_bytes(b"<p>docs index</p>")
    (root / "404.html").write_bytes(b"<p>not here</p>")
    (root / "app.js").write_bytes(JS)
    (root / "app.js.gz").write_bytes(GZ)
    (root / "app.js.br").write_bytes(b"pretend brotli")
    (root / "style.css.gz").symlink_to(base / "secret.txt")  # a sibling pointing out: never used
    (root / "link-in.txt").symlink_to("a.txt")
    (root / "link-out.txt").symlink_to(base / "secret.txt")
    (root / "escape").symlink_to(base)
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[Path, ServerProcess, ServerProcess]]:
    """(directory, percore with 2 loops, Starlette on uvicorn), serving the same tree."""
    root = make_tree(tmp_path_factory.mktemp("static"))
    before = os.environ.get("PERCORE_TEST_STATIC")
    os.environ["PERCORE_TEST_STATIC"] = str(root)
    started = []
    try:
        ours = ServerProcess(APP, "--loops", "2").start()
        started.append(ours)
        theirs = ServerProcess(STARLETTE, server="uvicorn").start()
        started.append(theirs)
        yield root, ours, theirs
    finally:
        if before is None:
            os.environ.pop("PERCORE_TEST_STATIC", None)
        else:
            os.environ["PERCORE_TEST_STATIC"] = before
        for server in started:
            assert server.stop() == 0 or server.server != "percore", server.stderr


def fetch(server: ServerProcess, path: str, method: str = "GET", **headers: str):
    client = server.client()
    try:
        return client.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    finally:
        client.close()


def raw_get(port: int, target: str) -> bytes:
    """GET `target` exactly as written (no client-side normalisation); the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode("latin-1"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


SAME_AS_STARLETTE = [
    "/static/a.txt",
    "/static/with%20space.txt",
    "/static/data.json",
    "/static/page.html",
    "/static/style.css",
    "/static/image.png",
    "/static/logo.svg",
    "/static/blob.unknownext",
    "/static/empty.txt",
    "/static/sub/inner.txt",
    "/static/link-in.txt",
    "/static/app.js",
    "/static/big.bin",
    "/static//sub/./inner.txt",
]


@pytest.mark.parametrize("path", SAME_AS_STARLETTE)
def test_files_are_served_with_starlettes_headers(servers, path):
    _, ours, theirs = servers
    mine, reference = fetch(ours, path), fetch(theirs, path)
    assert (mine.status, mine.body) == (reference.status, reference.body) == (200, mine.body)
    for name in ("content-type", "content-length", "accept-ranges", "last-modified"):
        assert mine.headers.get(name) == reference.headers.get(name), name
    assert mine.headers["etag"].startswith('"') and mine.headers["etag"].endswith('"')
    assert "content-encoding" not in mine.headers


def test_the_body_is_the_file(servers):
    _, ours, _ = servers
    assert fetch(ours, "/static/big.bin").body == BIG
    assert fetch(ours, "/static/a.txt").body == TEXT
    assert fetch(ours, "/v1/assets/sub/inner.txt").body == b"inner\n"  # mounted through a router


ATTACKS = [
    "/static/../secret.txt",
    "/static/..%2Fsecret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/sub/../../secret.txt",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/static/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2Fetc%2Fpasswd",
    "/static/sub%2Finner.txt",  # an encoded separator is refused, not taken as one
    "/static/..%5Csecret.txt",  # an encoded backslash
    "/static/sub%5C..%5C..%5Csecret.txt",
    "/static/a.txt%00",  # NUL
    "/static/a.txt%00.png",
    "/static/link-out.txt",  # a symlink inside pointing outside
    "/static/escape/secret.txt",  # a directory symlink pointing outside
    "/static/escape",
    "/static/sub",  # a directory (not html mode)
    "/static/sub/",
    "/static/",
    "/static",
    "/static/missing.txt",
    "/static/sub/..",
    "/static/a.txt/..",
]


def test_no_path_leaves_the_directory(servers):
    _, ours, _ = servers
    client = ours.client()
    try:
        for target in ATTACKS:
            reply = client.get(target)
            assert (reply.status, reply.body) == (404, b"Not Found"), target
    finally:
        client.close()
    # Sent byte for byte (a client library might normalise): a literal backslash and dot segments.
    for target in ["/static/..\\secret.txt", "/static/sub/..\\..\\secret.txt", "/static/./../secret.txt"]:
        answer = raw_get(ours.port, target)
        assert answer.split(b" ", 2)[1] in (b"400", b"404"), (target, answer[:100])
        assert SECRET not in answer
    assert fetch(ours, "/static/a.txt").body == TEXT  # still serving


def test_other_methods_are_refused(servers):
    _, ours, theirs = servers
    for method in ("POST", "PUT", "DELETE"):
        assert (
            fetch(ours, "/static/a.txt", method).status
            == 405
            == fetch(theirs, "/static/a.txt", method).status
        )


def test_validators_answer_304_as_starlette_does(servers):
    _, ours, theirs = servers
    for server in (ours, theirs):
        first = fetch(server, "/static/a.txt")
        etag, last_modified = first.headers["etag"], first.headers["last-modified"]
        for conditions in (
            {"If-None-Match": etag},
            {"If-None-Match": f'"nope", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": last_modified},
            {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
        ):
            reply = fetch(server, "/static/a.txt", **conditions)
            assert (reply.status, reply.body) == (304, b""), (server.server, conditions)
            assert reply.headers["etag"] == etag
            assert "content-length" not in reply.headers or reply.headers["content-length"] == "0"
        for conditions in (
            {"If-None-Match": '"nope"'},
            {"If-None-Match": '"nope"', "If-Modified-Since": last_modified},  # the tag decides
            {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        ):
            reply = fetch(server, "/static/a.txt", **conditions)
            assert (reply.status, reply.body) == (200, TEXT), (server.server, conditions)


def test_a_changed_file_gets_a_new_etag(servers):
    root, ours, _ = servers
    path = root / "changing.txt"
    path.write_bytes(b"one")
    first = fetch(ours, "/static/changing.txt")
    path.write_bytes(b"three")
    os.utime(path, (time.time() + 5, time.time() + 5))
    second = fetch(ours, "/static/changing.txt", If_None_Match=first.headers["etag"])
    assert (second.status, second.body) == (200, b"three")
    assert second.headers["etag"] != first.headers["etag"]


@pytest.mark.parametrize(
    ("value", "status", "content_range", "body"),
    [
        ("bytes=0-4", 206, f"bytes 0-4/{len(TEXT)}", TEXT[:5]),
        ("bytes=7-", 206, f"bytes 7-{len(TEXT) - 1}/{len(TEXT)}", TEXT[7:]),
        ("bytes=-6", 206, f"bytes {len(TEXT) - 6}-{len(TEXT) - 1}/{len(TEXT)}", TEXT[-6:]),
        ("bytes=5-1000", 206, f"bytes 5-{len(TEXT) - 1}/{len(TEXT)}", TEXT[5:]),
        ("bytes=1000-", 416, f"bytes */{len(TEXT)}", None),
        ("bytes=1000-2000", 416, f"bytes */{len(TEXT)}", None),
    ],
)
def test_a_single_range_is_answered_as_starlette_answers_it(servers, value, status, content_range, body):
    _, ours, theirs = servers
    mine, reference = fetch(ours, "/static/a.txt", Range=value), fetch(theirs, "/static/a.txt", Range=value)
    assert mine.status == reference.status == status
    assert mine.headers["content-range"] == reference.headers["content-range"] == content_range
    if body is not None:
        assert mine.body == reference.body == body
        assert mine.headers["content-length"] == str(len(body))


def test_range_edges(servers):
    _, ours, _ = servers
    # Several ranges: the whole file, 200 (no multipart/byteranges; RFC 9110 lets a server ignore Range).
    whole = fetch(ours, "/static/a.txt", Range="bytes=0-1, 4-5")
    assert (whole.status, whole.body) == (200, TEXT) and "content-range" not in whole.headers
    # A malformed Range is ignored (Starlette answers 400).
    assert fetch(ours, "/static/a.txt", Range="bytes=5-2").status == 200
    assert fetch(ours, "/static/a.txt", Range="pages=1-2").status == 200
    # If-Range: the range only while the validator matches.
    etag = fetch(ours, "/static/a.txt").headers["etag"]
    assert fetch(ours, "/static/a.txt", Range="bytes=0-1", If_Range=etag).status == 206
    stale = fetch(ours, "/static/a.txt", Range="bytes=0-1", If_Range='"stale"')
    assert (stale.status, stale.body) == (200, TEXT)
    # A range across the chunks of a streamed file.
    start, end = 65_000, 300_000
    part = fetch(ours, "/static/big.bin", Range=f"bytes={start}-{end}")
    assert (part.status, part.body) == (206, BIG[start : end + 1])
    assert part.headers["content-range"] == f"bytes {start}-{end}/{len(BIG)}"


def test_head_sends_the_headers_without_the_body(servers):
    _, ours, theirs = servers
    for path in ("/static/a.txt", "/static/big.bin"):
        mine, reference = fetch(ours, path, "HEAD"), fetch(theirs, path, "HEAD")
        assert (mine.status, mine.body) == (200, b"")
        for name in ("content-type", "content-length", "last-modified", "accept-ranges"):
            assert mine.headers[name] == reference.headers[name], name
    # The connection stays usable after a HEAD (no stray body bytes on the wire).
    client = ours.client()
    try:
        assert client.request("HEAD", "/static/big.bin").headers["content-length"] == str(len(BIG))
        assert client.get("/static/a.txt").body == TEXT
    finally:
        client.close()


@pytest.mark.parametrize(
    ("accept", "body", "encoding"),
    [
        ("gzip, deflate, br", b"pretend brotli", "br"),
        ("gzip", GZ, "gzip"),
        ("br;q=0, gzip", GZ, "gzip"),
        ("identity", JS, None),
        (None, JS, None),
    ],
)
def test_precompressed_siblings_are_sent_to_clients_that_accept_them(servers, accept, body, encoding):
    _, ours, _ = servers
    reply = fetch(ours, "/static/app.js", **({"Accept-Encoding": accept} if accept else {}))
    assert (reply.status, reply.body) == (200, body)
    assert reply.headers.get("content-encoding") == encoding
    assert reply.headers["vary"] == "Accept-Encoding"
    assert reply.headers["content-type"] == "text/javascript; charset=utf-8"
    assert reply.headers["content-length"] == str(len(body))
    if encoding == "gzip":
        assert gzip.decompress(reply.body) == JS


def test_precompressed_siblings_keep_their_own_validators(servers):
    _, ours, _ = servers
    plain = fetch(ours, "/static/app.js")
    zipped = fetch(ours, "/static/app.js", Accept_Encoding="gzip")
    assert plain.headers["etag"] != zipped.headers["etag"]
    # The plain file's tag does not validate the gzip variant, and the other way round.
    assert (
        fetch(ours, "/static/app.js", Accept_Encoding="gzip", If_None_Match=plain.headers["etag"]).status
        == 200
    )
    again = fetch(ours, "/static/app.js", Accept_Encoding="gzip", If_None_Match=zipped.headers["etag"])
    assert again.status == 304 and again.headers["vary"] == "Accept-Encoding"
    # A sibling that points outside the directory is never sent.
    css = fetch(ours, "/static/style.css", Accept_Encoding="gzip")
    assert (css.body, css.headers.get("content-encoding")) == (b"p {}", None)


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/site/docs/", 200, b"<p>docs index</p>"),
        ("/site/docs/index.html", 200, b"<p>docs index</p>"),
        ("/site/missing", 404, b"<p>not here</p>"),
        ("/site/sub/", 404, b"<p>not here</p>"),  # a directory without index.html
        ("/site/link-out.txt", 404, b"<p>not here</p>"),
        ("/site/a.txt", 200, TEXT),
    ],
)
def test_html_mode_serves_index_html_and_404_html_as_starlette_does(servers, path, status, body):
    _, ours, theirs = servers
    mine, reference = fetch(ours, path), fetch(theirs, path)
    assert (mine.status, mine.body) == (reference.status, reference.body) == (status, body)
    assert mine.headers["content-type"] == reference.headers["content-type"]


def test_html_mode_redirects_a_directory_to_its_slash(servers):
    _, ours, theirs = servers
    mine, reference = fetch(ours, "/site/docs?x=1"), fetch(theirs, "/site/docs?x=1")
    assert mine.status == reference.status == 307
    assert mine.headers["location"] == "/site/docs/?x=1"
    assert reference.headers["location"].endswith("/site/docs/?x=1")


def test_a_root_mount_redirects_to_a_local_path(servers):
    """`GET //docs` on a root mount: `Location: //docs/` would send the browser to the host "docs"."""
    root, _, _ = servers
    os.environ["PERCORE_TEST_STATIC"] = str(root)  # the servers fixture restores it
    server = ServerProcess("tests.apps.static_app:root_api").start()
    try:
        for target, location in [
            ("//docs", b"/docs/"),
            ("///docs?x=1", b"/docs/?x=1"),
            ("/./%64ocs", b"/docs/"),
            ("/docs", b"/docs/"),
        ]:
            head = raw_get(server.port, target).partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 307"), (target, head)
            assert b"\r\nlocation: " + location + b"\r\n" in head + b"\r\n", (target, head)
        assert raw_get(server.port, "//docs/").endswith(b"<p>docs index</p>")
    finally:
        assert server.stop() == 0, server.stderr


def test_static_requests_never_enter_python(servers):
    _, ours, _ = servers
    before = fetch(ours, "/calls").json()["calls"]
    for path in ("/static/a.txt", "/static/big.bin", "/static/missing", "/site/docs/", "/v1/assets/a.txt"):
        fetch(ours, path)
    assert fetch(ours, "/calls").json()["calls"] == before + 1  # only the /calls request itself


def test_a_missing_directory_is_refused_at_construction(tmp_path):
    with pytest.raises(percore.ConfigurationError, match="does not exist"):
        percore.StaticFiles(directory=tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(percore.ConfigurationError, match="does not exist"):
        percore.StaticFiles(directory=tmp_path / "file")


def test_check_dir_false_serves_404_until_the_directory_appears(tmp_path):
    later = tmp_path / "later"
    api = percore.App()
    api.mount("/files", percore.StaticFiles(directory=later, check_dir=False))
    with TestClient(api) as client:
        assert client.get("/files/a.txt").status_code == 404
        later.mkdir()
        (later / "a.txt").write_bytes(b"now")
        assert client.get("/files/a.txt").content == b"now"


def test_mount_refuses_what_it_cannot_serve(tmp_path):
    api = percore.App()
    with pytest.raises(percore.ConfigurationError, match=r"only percore\.StaticFiles"):
        api.mount("/app", object())
    with pytest.raises(percore.ConfigurationError, match="must start with '/'"):
        api.mount("static", percore.StaticFiles(directory=tmp_path))
    api.mount("/", percore.StaticFiles(directory=tmp_path))  # at the root: every path
    (tmp_path / "index.txt").write_bytes(b"root")
    with TestClient(api) as client:
        assert client.get("/index.txt").content == b"root"
        assert client.get("/nope").status_code == 404
    # Mounts are not API operations.
    assert api.openapi()["paths"] == {}


def test_a_slow_reader_gets_the_whole_big_file(servers):
    """Bounded read-ahead: the server waits for the client instead of buffering the file."""
    _, ours, _ = servers
    with socket.create_connection(("127.0.0.1", ours.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(8192):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == BIG


def test_a_client_leaving_mid_file_leaves_the_server_serving(servers):
    _, ours, _ = servers
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", ours.port), timeout=10) as sock:
            sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    client = Client(ours.port)
    try:
        assert client.get("/static/big.bin").body == BIG
    finally:
        client.close()
