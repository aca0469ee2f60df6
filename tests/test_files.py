"""Files named by the request: `percore.safe_file` refuses every way out of its directory (over real sockets
and in-process), and `FileResponse(filename=...)` writes `content-disposition` exactly as Starlette does."""

from __future__ import annotations

import email.message
import os
from pathlib import Path

import percore
import pytest
from percore.responses import FileResponse, safe_file

APP = "tests.apps.files_app:api"
SECRET = b"the secret outside the public directory\n"
PUBLIC = b"public\n"


@pytest.fixture
def public(tmp_path: Path) -> Path:
    """tmp/secret.txt outside; tmp/public/ with files, a subdirectory, and symlinks pointing in and out."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "public"
    (root / "sub").mkdir(parents=True)
    (root / "public.txt").write_bytes(PUBLIC)
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "with space.txt").write_bytes(b"spaced\n")
    (root / "link-in.txt").symlink_to("public.txt")
    (root / "link-out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "escape").symlink_to(tmp_path)
    return root


SERVED = {
    "/files/public.txt": PUBLIC,
    "/files/sub/inner.txt": b"inner\n",
    "/files/with%20space.txt": b"spaced\n",
    "/files/link-in.txt": PUBLIC,  # a symlink that stays inside is served
    "/files/sub%2Finner.txt": b"inner\n",  # an encoded separator inside the directory is just a separator
}

ATTACKS = [
    "/files/../secret.txt",
    "/files/..%2Fsecret.txt",
    "/files/%2E%2E/secret.txt",
    "/files/%2e%2e%2fsecret.txt",
    "/files/sub/../../secret.txt",
    "/files/sub/..%2F..%2Fsecret.txt",
    "/files/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/files//etc/passwd",  # captures an absolute path
    "/files/%2Fetc%2Fpasswd",
    "/files/public.txt%00",  # NUL
    "/files/public.txt%00.png",
    "/files/link-out.txt",  # a symlink inside pointing outside
    "/files/escape/secret.txt",  # a directory symlink pointing outside
    "/files/sub",  # a directory
    "/files/sub/",
    "/files/missing.txt",
    "/files/sub/..",
]


def test_safe_file_serves_inside_and_refuses_every_way_out_over_sockets(serve, public, monkeypatch):
    monkeypatch.setenv("PERCORE_TEST_FILES", str(public))
    server = serve(APP, "--loops", "1")
    client = server.client()
    try:
        for target, body in SERVED.items():
            reply = client.get(target)
            assert (reply.status, reply.body) == (200, body), target
        # The attacks are real: the naive idiom serves the secret through them.
        for target in ("/unsafe/../secret.txt", "/unsafe/..%2Fsecret.txt", "/unsafe/link-out.txt"):
            reply = client.get(target)
            assert (reply.status, reply.body) == (200, SECRET), target
        for target in ATTACKS:
            reply = client.get(target)
            assert reply.status == 404, (target, reply.status, reply.body)
            assert reply.json() == {"detail": "Not Found"}, target
            assert b"secret" not in reply.body and b"root:" not in reply.body
    finally:
        client.close()
    assert server.get("/files/public.txt").body == PUBLIC  # still serving


@pytest.mark.parametrize(
    "path",
    [
        "",
        "../secret.txt",
        "sub/../../secret.txt",
        "sub/..",
        "..",
        "/etc/passwd",
        str(Path("/etc/passwd")),
        "public.txt\x00",
        "public.txt\x00.png",
        "link-out.txt",
        "escape/secret.txt",
        "escape",
        "sub",
        "missing.txt",
    ],
)
def test_safe_file_refuses_paths_out_of_its_directory_with_404(public, path):
    with pytest.raises(percore.HTTPException) as refused:
        safe_file(public, path)
    assert refused.value.status_code == 404


def test_safe_file_returns_a_file_response_for_the_resolved_file(public):
    response = safe_file(str(public), "link-in.txt", filename="data.txt")
    assert isinstance(response, FileResponse)
    assert response.path == os.path.realpath(public / "public.txt")
    headers = dict(response.headers)
    assert headers["content-length"] == str(len(PUBLIC))
    assert headers["content-disposition"] == 'attachment; filename="data.txt"'
    assert response.media_type == "text/plain"
    assert percore.safe_file is safe_file and "safe_file" in percore.__all__


NAMES = [
    "report.pdf",
    "a b.txt",
    'quote".txt',
    'evil.txt"; filename="evil.exe',
    "a.txt; filename=evil.exe",
    "naïve résumé.pdf",
    "日本語.txt",
    "new\r\nline.txt",
    "back\\slash.txt",
    "per%20cent.txt",
    "dir/name.txt",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("disposition", ["attachment", "inline"])
def test_content_disposition_is_written_as_starlette_writes_it(tmp_path, name, disposition):
    from starlette.responses import FileResponse as StarletteFileResponse

    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    ours = dict(FileResponse(path, filename=name, content_disposition_type=disposition).headers)
    theirs = StarletteFileResponse(path, filename=name, content_disposition_type=disposition)
    assert ours["content-disposition"] == theirs.headers["content-disposition"]


def test_a_quote_in_a_filename_cannot_add_a_parameter_on_the_wire(serve, public, monkeypatch):
    monkeypatch.setenv("PERCORE_TEST_FILES", str(public))
    server = serve(APP, "--loops", "1")
    reply = server.get("/download?name=evil.txt%22%3B%20filename%3D%22evil.exe")
    assert reply.status == 200 and reply.body == PUBLIC
    value = reply.headers["content-disposition"]
    assert value == "attachment; filename*=utf-8''evil.txt%22%3B%20filename%3D%22evil.exe"
    parsed = email.message.Message()
    parsed["content-disposition"] = value
    params = parsed.get_params(header="content-disposition")
    assert params == [("attachment", ""), ("filename", ("utf-8", "", 'evil.txt"; filename="evil.exe'))]
    assert parsed.get_filename() == 'evil.txt"; filename="evil.exe'
    plain = server.get("/download?name=report%20final.pdf&disposition=inline")
    assert plain.headers["content-disposition"] == "inline; filename*=utf-8''report%20final.pdf"


def test_a_content_disposition_header_given_wins(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    response = FileResponse(path, headers={"Content-Disposition": "inline"}, filename="x.bin")
    assert [v for k, v in response.headers if k.lower() == "content-disposition"] == ["inline"]
