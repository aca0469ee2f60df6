"""The OpenAPI schema and the docs pages' routes (py/percore/_openapi.py), in process: the schema a percore
app generates once at startup, and what /openapi.json, /docs and /redoc serve. The pages in a real browser:
tests/test_docs.py."""

from __future__ import annotations

import sys

import percore
import pytest
from percore import _openapi
from percore.testing import TestClient

from .apps import native_api
from .apps.docs_app import api as docs_api


def test_openapi_schema_and_offline_docs_page():
    with TestClient(native_api.api) as client:
        schema = client.get("/openapi.json").json()
        assert schema["openapi"] == "3.1.0"
        read = schema["paths"]["/typed/{number}/{ratio}/{flag}/{ident}"]["get"]
        assert [(p["name"], p["in"], p["schema"]) for p in read["parameters"]] == [
            ("number", "path", {"type": "integer"}),
            ("ratio", "path", {"type": "number"}),
            ("flag", "path", {"type": "boolean"}),
            ("ident", "path", {"type": "string", "format": "uuid"}),
        ]
        assert "422" in read["responses"]
        create = schema["paths"]["/items"]["post"]
        assert create["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Item"
        }
        assert schema["components"]["schemas"]["Item"]["required"] == ["name", "price"]
        assert "201" in create["responses"]
        docs = client.get("/docs")
        assert docs.headers["content-type"].startswith("text/html")
        assert "/openapi.json" in docs.text
        assert "http://" not in docs.text and "https://" not in docs.text  # nothing fetched from elsewhere


def test_swagger_ui_assets_are_served_by_percore():
    if _openapi.swagger_ui_dir() is None:
        pytest.skip("percore[docs] (swagger-ui-bundle-v2) is not installed")
    with TestClient(docs_api) as client:
        page = client.get("/docs").text
        assert 'src="/docs/swagger-ui-bundle.js"' in page and 'href="/docs/swagger-ui.css"' in page
        script = client.get("/docs/swagger-ui-bundle.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in script.content
        assert client.get("/docs/swagger-ui.css").headers["content-type"].startswith("text/css")


def test_docs_url_none_serves_neither_page():
    api = percore.App(docs_url=None, redoc_url=None)
    with TestClient(api) as client:
        assert client.get("/openapi.json").status_code == 200
        for path in ("/docs", "/docs/swagger-ui-bundle.js", "/redoc"):
            assert client.get(path).status_code == 404


@pytest.mark.parametrize("with_pydantic", [True, False], ids=["pydantic", "no-pydantic"])
def test_a_json_body_is_the_request_body_with_its_schema(monkeypatch, with_pydantic):
    if not with_pydantic:
        monkeypatch.setitem(sys.modules, "pydantic", None)  # `import pydantic` raises ImportError
    schema = docs_api.openapi()
    body = schema["paths"]["/items"]["post"]["requestBody"]
    assert body["required"] is True
    item = body["content"]["application/json"]["schema"]
    if "$ref" in item:
        item = schema["components"]["schemas"][item["$ref"].rsplit("/", 1)[1]]
    assert item["type"] == "object" and item["required"] == ["name", "price"]
    properties = item["properties"]
    assert properties["name"]["type"] == "string" and properties["price"]["type"] == "number"
    assert properties["tags"]["type"] == "array" and properties["tags"]["items"] == {"type": "string"}
