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
    assert route.path_params == ["user_id", "post_id"]
    assert route.request_param == "request"


def test_request_is_found_by_annotation_under_any_name():
    api = percore.App()

    @api.post("/items")
    def create(incoming: percore.Request):
        return None

    assert api.routes[0].request_param == "incoming"


def test_route_registers_every_method_with_one_handler():
    api = percore.App()

    @api.route("/things", methods=["get", "post"], status_code=201)
    def things():
        return []

    assert [(r.method, r.status_code) for r in api.routes] == [("GET", 201), ("POST", 201)]


def test_a_parameter_nobody_can_fill_is_rejected_at_registration():
    api = percore.App()
    with pytest.raises(percore.ConfigurationError, match="'q' is neither a path parameter"):

        @api.get("/search")
        def search(q):
            return q


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
