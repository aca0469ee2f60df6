"""The benchmark's promise: every contender does the same work. The apps percore serves in benches/
(native, FastAPI, Starlette) must give the same answers on every endpoint, over a real socket. (Granian's
RSGI app and Robyn's live in the peers' venv and are checked by benches/run.py before it measures.)"""

import json
from pathlib import Path

import pytest

from benches.apps.common import SLEEP_SECONDS, STATIC_BYTES, burn

ECHO_BODY = (Path(__file__).resolve().parent.parent / "benches" / "echo.json").read_bytes().rstrip()

APPS = ["benches.apps.native:api", "benches.apps.fastapi_app:app", "benches.apps.starlette_app:app"]


@pytest.mark.parametrize("app", APPS)
def test_every_bench_app_answers_every_endpoint_alike(serve, app):
    server = serve(app, "--loops", "1", "--log-level", "warning")
    client = server.client()
    try:
        expected = {
            "/json": {"message": "Hello, World!"},
            "/users/42?q=x": {"id": "42", "q": "x"},
            "/cpu": {"total": burn()},
            "/sleep": {"slept": SLEEP_SECONDS},
        }
        for path, body in expected.items():
            response = client.get(path)
            assert response.status == 200, path
            assert response.json() == body, path
        plaintext = client.get("/plaintext")
        assert (plaintext.status, plaintext.body) == (200, b"Hello, World!")
        echo = client.request("POST", "/echo", ECHO_BODY, {"Content-Type": "application/json"})
        assert echo.status == 200
        assert echo.json() == json.loads(ECHO_BODY)
        static = client.get("/static/64k.bin")
        assert (static.status, static.body) == (200, STATIC_BYTES)
    finally:
        client.close()


@pytest.mark.parametrize("app", APPS[:2])
def test_native_and_fastapi_bench_apps_answer_depends_alike(serve, app):
    server = serve(app, "--loops", "1", "--log-level", "warning")
    client = server.client()
    body = (Path(__file__).resolve().parent.parent / "benches" / "depends.json").read_bytes().rstrip()
    headers = {"Content-Type": "application/json", "X-Tenant": "acme", "Authorization": "Bearer ada"}
    try:
        reply = client.request("POST", "/depends", body, headers)
        assert reply.status == 200
        assert reply.json() == {
            "user": {"tenant": "acme", "user": "ada"},
            "customer": 4711,
            "lines": 2,
            "total": 44.48,
        }
        missing = client.request("POST", "/depends", body, {"Content-Type": "application/json"})
        assert missing.status == 422
        assert [e["loc"] for e in missing.json()["detail"]] == [["header", "x-tenant"]]
    finally:
        client.close()


@pytest.mark.parametrize("app", APPS[:2])
def test_native_and_fastapi_bench_apps_answer_upload_alike(serve, app):
    from benches.apps.uploads import FILE_SIZE, upload_body

    server = serve(app, "--loops", "1", "--log-level", "warning")
    client = server.client()
    body, content_type = upload_body()
    try:
        reply = client.request("POST", "/upload", body, {"Content-Type": content_type})
        assert reply.status == 200
        assert reply.json() == {"filename": "upload.bin", "size": FILE_SIZE, "note": "bench"}
    finally:
        client.close()
