"""Forms and uploads (py/percore/_forms.py, runtime/src/forms.rs, runtime/src/python/forms.rs) and
dataclass/TypedDict body validation (py/percore/_validation.py): side by side with FastAPI on the same
app (tests/apps/forms_app.py), and over a real ``runtime serve`` socket: uploads spooled to disk, limits,
malformed bodies."""

import dataclasses
import io
import json
import os
import socket
import typing
from pathlib import Path

import pytest
from percore import _forms
from percore.params import _plain_converter
from percore.testing import TestClient

from .apps import forms_app
from .test_websocket_limits import memory_kib, wait_for

APP = "tests.apps.forms_app:api"


@pytest.fixture(scope="module")
def both():
    """(percore TestClient, FastAPI TestClient) on the same app."""
    import fastapi.testclient as fastapi_testclient

    with TestClient(forms_app.make("percore")) as ours:
        theirs = fastapi_testclient.TestClient(forms_app.make("fastapi"), raise_server_exceptions=False)
        yield ours, theirs


TXT = ("a.txt", b"hello\r\nworld", "text/plain")
# (path, fields, files): each sent as the same bytes to both apps (urlencoded without files).
FORMS = [
    ("/login", {"username": "ada", "age": "36", "tags": ["x", "y"], "remember": "on"}, None),
    ("/login", {}, None),  # missing
    ("/login", {"username": "", "age": "abc", "remember": "maybe"}, None),  # "" is missing; bad values
    ("/login?q=zz", {"username": "ada"}, None),  # a query error beside the form
    ("/login", {"username": "caf\u00e9 & co=1"}, None),  # percent-encoding
    ("/login", {"username": "ada", "age": "7"}, [("other", ("u.txt", b"file", "text/plain"))]),  # multipart
    ("/upload", {"note": "n"}, [("file", TXT)]),
    ("/upload", {}, None),  # missing file
    ("/upload", {"file": "just text"}, None),  # text where a file is expected
    ("/upload", {}, [("file", ("", b"", "application/octet-stream"))]),
    ("/bytes", {}, [("data", TXT), ("more", ("m1", b"1", "x/y")), ("more", ("m2", b"2", "x/y"))]),
    ("/headers", {}, [("file", TXT)]),  # UploadFile.headers is case-insensitive
    ("/bytes", {"data": "as text"}, None),
    ("/bytes", {}, None),
    ("/optional", {}, None),
    ("/optional", {}, [("file", TXT), ("files", TXT), ("files", ("b.txt", b"", "text/plain"))]),
    ("/token", {"user": "ada", "password": "secret", "scope": "read"}, None),
    ("/token", {"user": "ada"}, None),  # a dependency's missing form field
    ("/oauth-token", {"username": "ada", "password": "pw", "scope": "a b", "grant_type": "password"}, None),
    ("/oauth-token", {"password": "pw", "client_id": "c"}, None),
]


def send_form(client, path: str, fields, files):
    body, content_type = _forms.encode(fields, files)
    return client.post(path, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(("path", "fields", "files"), FORMS, ids=[f"{p} {f} {fs}" for p, f, fs in FORMS])
def test_same_answers_as_fastapi(both, path, fields, files):
    mine, reference = (send_form(client, path, fields, files) for client in both)
    assert mine.status_code == reference.status_code, (mine.content, reference.content)
    assert mine.json() == reference.json()


BODIES = [
    ("/item", {"name": "pen", "price": "1.5", "inner": {"x": "3"}, "tags": ["a"]}),
    ("/item", {"name": "pen"}),  # missing: ["body", "price"]
    ("/item", {"name": 1, "price": "abc"}),  # wrong types
    ("/item", {"name": "pen", "price": 1, "extra": 5}),  # extra fields are ignored
    ("/item", {"name": "pen", "price": 1, "inner": {"x": "no"}}),  # nested
    ("/item", {"name": "pen", "price": 1, "inner": [1]}),
    ("/item", {"name": "pen", "price": 1, "kind": "z"}),  # a Literal: ctx as FastAPI
    ("/item", {"name": "pen", "price": 2.5, "tags": [1, "a"]}),
    ("/item", [1]),
    ("/movie", {"title": "Alien", "year": 1979, "inner": {"x": 1}}),
    ("/movie", {"title": "Alien"}),
    ("/movie", {"title": ["x"], "year": "y", "inner": {}}),
    ("/movie", "not an object"),
]


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[f"{p} {b}" for p, b in BODIES])
def test_dataclass_and_typed_dict_bodies_as_fastapi(both, path, body):
    """With pydantic (installed in the test venvs) the body goes through its TypeAdapter; the errors are
    FastAPI's, ``ctx`` included. Without pydantic, ``_plain_converter`` (``_validation``) must give the same (next test)."""
    mine, reference = (client.post(path, json=body) for client in both)
    assert (mine.status_code, mine.json()) == (reference.status_code, reference.json())


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[f"{p} {b}" for p, b in BODIES])
def test_plain_validation_without_pydantic_matches_fastapi(both, path, body):
    """The fallback used when pydantic is not installed validates per field with pydantic's errors."""
    _, theirs = both
    reference = theirs.post(path, json=body)
    annotation = forms_app.Item if path == "/item" else forms_app.Movie
    ok, value = _plain_converter(annotation)(body)
    if reference.status_code == 200:
        assert ok, value
        expected = reference.json()
        got = (
            dataclasses.asdict(value) if path == "/item" else {"title": value["title"], "year": value["year"]}
        )
        assert got == expected
    else:
        assert not ok
        assert value == reference.json()["detail"]


def test_openapi_request_bodies_as_fastapi(both):
    import fastapi
    from percore.app import App

    mine = forms_app.make("percore")
    assert isinstance(mine, App)
    ours = mine.openapi()
    theirs = forms_app.make("fastapi")
    assert isinstance(theirs, fastapi.FastAPI)
    reference = theirs.openapi()
    for path in ("/login", "/upload", "/bytes", "/optional", "/token"):
        body = ours["paths"][path]["post"]["requestBody"]
        assert body == reference["paths"][path]["post"]["requestBody"], path
        (media,) = body["content"].values()
        name = media["schema"]["$ref"].rsplit("/", 1)[1]
        assert ours["components"]["schemas"][name] == reference["components"]["schemas"][name], path
        # Form fields are the body, not parameters.
        names = [p["name"] for p in ours["paths"][path]["post"].get("parameters", [])]
        assert names == (["q"] if path == "/login" else []), path


def test_upload_file_methods(both):
    ours, _ = both
    reply = send_form(ours, "/spool", {}, [("file", ("s.bin", b"0123456789", "application/x-thing"))])
    assert reply.json() == {"on_disk": False, "disk_size": None, "size": 10, "head": "0123", "length": 10}


def test_upload_file_headers_are_case_insensitive_and_read_only():
    from percore.datastructures import Headers, UploadFile

    upload = UploadFile(io.BytesIO(b""), headers={"Content-Type": "text/plain", "x-a": "1"})
    assert upload.content_type == "text/plain"
    assert upload.headers["content-TYPE"] == upload.headers.get("CONTENT-TYPE") == "text/plain"
    assert "X-A" in upload.headers and 1 not in upload.headers
    assert list(upload.headers) == ["content-type", "x-a"] and len(upload.headers) == 2
    assert upload.headers == {"content-type": "text/plain", "x-a": "1"}
    assert Headers([("A", "1"), ("b", "2")]) == Headers({"a": "1", "B": "2"})
    with pytest.raises(TypeError):
        upload.headers["x-a"] = "2"  # type: ignore[index]
    assert UploadFile(io.BytesIO(b"")).headers == {}


def test_form_routes_are_configuration_checked():
    from typing import Annotated

    import percore

    api = percore.App()
    with pytest.raises(percore.ConfigurationError, match="JSON or a form"):

        @api.post("/mixed")
        async def mixed(item: dict, name: Annotated[str, percore.Form()]): ...

    with pytest.raises(percore.ConfigurationError, match="file parameter 'f' has type"):

        @api.post("/bad-file")
        async def bad_file(f: Annotated[int, percore.File()]): ...


# Over a real socket: streaming, spooling to disk, limits, malformed bodies.


@pytest.fixture(scope="module")
def server():
    from .conftest import ServerProcess

    process = ServerProcess(
        APP, "--loops", "2", "--routing", "round-robin", "--max-body-size", "8000000"
    ).start()
    yield process
    assert process.stop() == 0, process.stderr


def raw_request(server, head: str, chunks: typing.Iterable[bytes]) -> tuple[int, bytes]:
    """Sends ``head`` then the body in ``chunks`` (chunked encoding), returns (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        try:
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused early: the server may have closed already
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def multipart_head(path: str, boundary: str) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n"
    )


def test_a_large_upload_streams_to_a_file_on_disk(server):
    """3 MB sent in 64 KiB chunks: past the 1 MiB threshold the upload is an unlinked file on disk."""
    size = 3_000_000
    start = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    chunks = [start] + [b"x" * 65536] * (size // 65536) + [b"x" * (size % 65536), b"\r\n--B--\r\n"]
    status, body = raw_request(server, multipart_head("/spool", "B"), chunks)
    assert status == 200, body
    assert json.loads(body) == {
        "on_disk": True,
        "disk_size": size,
        "size": size,
        "head": "xxxx",
        "length": size,
    }
    # A small one stays in memory.
    small = [b'--B\r\nContent-Disposition: form-data; name="file"; filename="s"\r\n\r\nabcd\r\n--B--\r\n']
    status, body = raw_request(server, multipart_head("/spool", "B"), small)
    assert json.loads(body)["on_disk"] is False


def test_malformed_and_oversized_bodies_are_refused_and_the_server_keeps_serving(server):
    truncated = [b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc']
    status, body = raw_request(server, multipart_head("/upload", "B"), truncated)
    assert status == 400
    assert json.loads(body)["detail"].startswith("Malformed multipart body")
    head = multipart_head("/upload", "B").replace("; boundary=B", "")
    status, body = raw_request(server, head, [b"--B--\r\n"])
    assert (status, json.loads(body)) == (400, {"detail": "Missing boundary in multipart."})
    fields = b"".join(b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n' for _ in range(1001))
    status, body = raw_request(server, multipart_head("/login", "B"), [fields, b"--B--\r\n"])
    assert (status, json.loads(body)) == (
        400,
        {"detail": "Too many fields. Maximum number of fields is 1000."},
    )
    endless_header = b'--B\r\nContent-Disposition: form-data; name="username"\r\nX-Junk: ' + b"j" * 20_000
    status, body = raw_request(
        server, multipart_head("/login", "B"), [endless_header, b"\r\n\r\nv\r\n--B--\r\n"]
    )
    assert (status, json.loads(body)) == (400, {"detail": "Part header too large."})
    long_field = b'--B\r\nContent-Disposition: form-data; name="username"\r\n\r\n' + b"u" * (1024 * 1024 + 1)
    status, body = raw_request(server, multipart_head("/login", "B"), [long_field, b"\r\n--B--\r\n"])
    assert (status, json.loads(body)) == (400, {"detail": "Part exceeded maximum size of 1024KB."})
    # Past --max-body-size (8 MB here), chunked: cut off with 413 as soon as it passes.
    start = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    status, _ = raw_request(server, multipart_head("/upload", "B"), [start] + [b"y" * 1_000_000] * 9)
    assert status == 413
    reply = send_form(server_client(server), "/upload", {"note": "still here"}, [("file", TXT)])
    assert reply.status == 200 and reply.json()["note"] == "still here"


def server_client(server):
    class Adapter:
        def post(self, path, content, headers):
            client = server.client()
            try:
                return client.request("POST", path, body=content, headers=headers)
            finally:
                client.close()

    return Adapter()


def test_urlencoded_and_def_handlers_over_sockets(server):
    client = server_client(server)
    reply = send_form(client, "/login?q=1", {"username": "ada", "tags": ["a", "b"]}, None)
    assert reply.json() == {"username": "ada", "age": 0, "tags": ["a", "b"], "remember": False, "q": 1}
    # A `def` handler (on the sync pool) gets its files too.
    reply = send_form(client, "/bytes", {}, [("data", TXT), ("more", ("m", b"1", "x/y"))])
    assert reply.json() == {"data": "hello\r\nworld", "more": [["m", "1"]]}


def deleted_files_open(server) -> int:
    """How many unlinked files the server process holds open: its spooled uploads (and its stderr)."""
    count = 0
    for entry in Path(f"/proc/{server.process.pid}/fd").iterdir():
        try:
            count += os.readlink(entry).endswith(" (deleted)")
        except OSError:
            pass  # closed while listed
    return count


def test_a_client_leaving_mid_upload_leaves_the_server_serving(server):
    before = deleted_files_open(server)
    start = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(multipart_head("/spool", "B").encode())
        for chunk in (start, b"z" * 2_000_000):  # past the spooling threshold: a temporary file is open
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        wait_for(lambda: deleted_files_open(server) > before, "the upload was never spooled to disk")
    # Gone before the end of the body: the parse is dropped, its temporary file closed; nothing answers it.
    wait_for(lambda: deleted_files_open(server) == before, "the temporary file of the upload stayed open")
    reply = send_form(server_client(server), "/upload", {"note": "after"}, [("file", TXT)])
    assert reply.status == 200 and reply.json()["note"] == "after"


def test_a_failing_upload_factory_closes_the_temporary_file():
    """The UploadFile factory raising before it took the spooled file: the file is closed all the same."""
    from .conftest import ServerProcess

    server = ServerProcess("tests.apps.forms_app:factory_fails_api", "--loops", "1").start()
    try:
        before = deleted_files_open(server)
        start = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
        for _ in range(2):
            status, _ = raw_request(
                server, multipart_head("/spool", "B"), [start, b"z" * 2_000_000, b"\r\n--B--\r\n"]
            )
            assert status == 500
        wait_for(lambda: deleted_files_open(server) == before, "a failed upload's temporary file stayed open")
        assert server.client().get("/ping").status == 200
    finally:
        assert server.stop() == 0, server.stderr
    assert "the UploadFile factory failed" in server.stderr


def test_a_body_of_millions_of_urlencoded_pairs_is_refused_without_building_them(server):
    """8 MB of `a&a&...` (4M pairs): refused at pair 1001, with no memory spent on the 4M pairs."""
    peak = memory_kib(server.process.pid, "VmHWM")
    head = (
        "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
    )
    status, body = raw_request(server, head, [b"a&" * 500_000] * 8)
    assert (status, json.loads(body)) == (
        400,
        {"detail": "Too many fields. Maximum number of fields is 1000."},
    )
    # Building the pairs took ~250 MB; the body itself is 8 MB (its buffers, at most a few times that).
    grown = memory_kib(server.process.pid, "VmHWM") - peak
    assert grown < 64 * 1024, f"the peak memory grew by {grown} KiB"
    reply = send_form(server_client(server), "/login", {"username": "ada"}, None)
    assert reply.status == 200 and reply.json()["username"] == "ada"


def test_form_routes_behind_middleware():
    from typing import Annotated

    import percore

    api = percore.App()

    @api.middleware
    async def tag(request, call_next):
        response = await call_next(request)
        response.headers.append(("x-seen", "1"))
        return response

    @api.post("/f")
    async def form_route(name: Annotated[str, percore.Form()], request: percore.Request):
        return {"name": name, "method": request.method}

    with TestClient(api) as client:
        reply = client.post("/f", data={"name": "ada"})
        assert (reply.status_code, reply.json(), reply.headers["x-seen"]) == (
            200,
            {"name": "ada", "method": "POST"},
            "1",
        )
        assert client.post("/f", data={}).json()["detail"][0]["loc"] == ["body", "name"]
