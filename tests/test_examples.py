"""The example apps work as their docstrings promise."""

from __future__ import annotations

import json

from percore.testing import TestClient


def test_shop_example_crud_filters_and_errors():
    from examples.shop import api

    with TestClient(api) as client:
        admin = {"X-User": "admin"}
        assert (
            client.post(
                "/products", json={"name": "pen", "price": 1.5}, headers={"X-User": "bob"}
            ).status_code
            == 403
        )
        created = client.post(
            "/products", json={"name": "pen", "price": 1.5, "tags": ["office"]}, headers=admin
        )
        assert created.status_code == 201
        product_id = created.json()["id"]
        client.post(
            "/products", json={"name": "desk", "price": 120, "tags": ["office", "big"]}, headers=admin
        )
        assert [
            p["name"] for p in client.get("/products", params={"tag": "office", "max_price": 10}).json()
        ] == ["pen"]
        assert client.get(f"/products/{product_id}").json()["name"] == "pen"
        export = client.get("/products/export")
        assert export.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line)["name"] for line in export.text.splitlines()] == ["pen", "desk"]
        invalid = client.post("/products", json={"name": "", "price": -1}, headers=admin)
        assert invalid.status_code == 422
        assert [e["loc"] for e in invalid.json()["detail"]] == [["body", "name"], ["body", "price"]]
        assert client.delete(f"/products/{product_id}", headers=admin).status_code == 204
        assert client.get(f"/products/{product_id}").status_code == 404
        loop = client.get("/loop")
        assert loop.json()["served"] >= 1
        assert "server-timing" in loop.headers


def test_hello_example():
    from examples.hello import api

    with TestClient(api) as client:
        assert client.get("/json").json() == {"message": "Hello, World!"}
        assert client.get("/users/9").json() == {"id": "9", "loop": 0}
