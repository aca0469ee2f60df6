"""percore.App: registration and handler-signature analysis, in process."""

from __future__ import annotations

import percore
import pytest
from percore._runtime import Server
from percore.server import ServerConfig


def test_path_params_and_request_are_found_in_the_signature():
    api = percore.App()

    @api.get("/users/{user_id}/posts/{post_id}")
    async def post(user_id: str, post_id: str, request: percore.Request, verbose: bool = False):
        return {}

    (route,) = api.routes
    assert route.method == "GET"
    assert [(p.name, p.source) for p in route.params] == [
        ("user_id", "path"),
        ("post_id", "path"),
        ("request", "request"),
        ("verbose", "query"),
    ]


def test_request_is_found_by_annotation_under_any_name():
    api = percore.App()

    @api.post("/items")
    def create(incoming: percore.Request):
        return None

    assert [(p.name, p.source) for p in api.routes[0].params] == [("incoming", "request")]


def test_route_registers_every_method_with_one_handler():
    api = percore.App()

    @api.route("/things", methods=["get", "post"], status_code=201)
    def things():
        return []

    assert [(r.method, r.status_code) for r in api.routes] == [("GET", 201), ("POST", 201)]


def test_a_path_must_start_with_a_slash():
    api = percore.App()
    with pytest.raises(percore.ConfigurationError, match="must start with '/'"):
        api.get("users")(lambda: None)


def test_conflicting_routes_are_rejected_before_serving():
    api = percore.App()
    api.get("/a/{x}")(lambda x: x)
    api.get("/a/{y}")(lambda y: y)
    with pytest.raises(percore.ConfigurationError, match="/a/"):
        percore.server.Server(api, ServerConfig(port=0))


def test_the_same_route_twice_is_rejected():
    api = percore.App()
    api.get("/a")(lambda: 1)
    api.get("/a")(lambda: 2)
    with pytest.raises(percore.ConfigurationError, match="registered twice"):
        percore.server.Server(api, ServerConfig(port=0))


@pytest.mark.parametrize(("loops", "message"), [("0", "at least 1"), ("many", "positive integer")])
def test_bad_loop_counts_are_configuration_errors(loops, message):
    with pytest.raises(percore.ConfigurationError, match=message):
        percore.server.Server(percore.App(), ServerConfig(port=0, loops=loops))


def test_unknown_routing_policy_is_a_configuration_error():
    with pytest.raises(percore.ConfigurationError, match="unknown routing policy"):
        percore.server.Server(percore.App(), ServerConfig(port=0, routing="fastest"))


def test_the_extension_is_the_documented_server_type():
    assert percore.server.Server(percore.App(), ServerConfig(port=0))._server.__class__ is Server


NATIVE = "tests.apps.native_api:api"


def test_http_exceptions_and_registered_handlers(serve):
    server = serve(NATIVE, "--loops", "1")
    client = server.client()
    reply = client.get("/teapot/http")
    assert (reply.status, reply.json(), reply.headers["x-tea"]) == (
        418,
        {"detail": "I'm a teapot"},
        "earl grey",
    )
    reply = client.get("/teapot/custom")
    assert (reply.status, reply.json()) == (503, {"error": "no more oolong"})
    reply = client.get("/teapot/bug")
    assert (reply.status, reply.text) == (500, "Internal Server Error")
    server.stop()
    assert "a plain bug" in server.stderr
    assert "I'm a teapot" not in server.stderr  # handled exceptions are not logged as failures


def test_routers_mount_under_their_prefix(serve):
    server = serve(NATIVE, "--loops", "1")
    client = server.client()
    assert client.get("/users/7").json() == {"user_id": 7}
    reply = client.request("DELETE", "/users/7")
    assert (reply.status, reply.body) == (204, b"")
    assert client.get("/7").status == 404


def test_loop_start_hooks_run_on_every_loop_and_state_is_per_loop(serve):
    server = serve(NATIVE, "--loops", "2", "--routing", "round-robin")
    client = server.client()
    replies = [client.get("/state").json() for _ in range(4)]
    assert all(reply["same_thread"] for reply in replies)
    assert {reply["loop"] for reply in replies} == {0, 1}


def test_router_prefix_must_be_a_path():
    with pytest.raises(percore.ConfigurationError, match="prefix"):
        percore.Router(prefix="users/")
