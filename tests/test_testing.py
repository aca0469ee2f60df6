"""percore.testing.TestClient drives the real server in-process."""

from __future__ import annotations

import percore
from percore.testing import TestClient

from .apps import native_api


def test_test_client_round_trip():
    with TestClient(native_api.api) as client:
        assert client.get("/users/3").json() == {"user_id": 3}
        reply = client.post("/items", json={"name": "pen", "price": 1.5})
        assert reply.status_code == 201
        assert reply.json()["type"] == "Item"
        assert client.get("/search", params={"q": "x", "tags": ["a", "b"]}).json()["tags"] == [
            "a",
            "b",
            "seen",
        ]
        assert client.get("/typed/x/1/1/1").status_code == 422
        assert client.get("/nowhere").status_code == 404


def test_test_client_runs_loop_hooks_and_stops_cleanly():
    api = percore.App()
    events = []

    @api.on_loop_start
    def start(state):
        state["ready"] = True
        events.append("start")

    @api.on_loop_stop
    def stop(state):
        events.append("stop")

    @api.get("/ready")
    def ready(request: percore.Request):
        return {"ready": request.state["ready"]}

    with TestClient(api) as client:
        assert client.get("/ready").json() == {"ready": True}
    assert events == ["start", "stop"]
