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
    assert (reply.status, reply.json()) == (503, {"error": "no more oolong", "path": "/teapot/custom"})
    reply = client.get("/teapot/bug")
    assert (reply.status, reply.text) == (500, "Internal Server Error")
    server.stop()
    assert "a plain bug" in server.stderr
    assert "I'm a teapot" not in server.stderr  # handled exceptions are not logged as failures


def test_an_exception_raised_by_an_exception_handler_is_handled_once_more(serve):
    """As in Starlette/FastAPI: the handler of the exception a handler raises answers, with the same
    request and inside the middleware; if that one raises too, the client gets a 500 and it is logged."""
    server = serve("tests.apps.exception_chain:api", "--loops", "1")
    client = server.client()
    reply = client.get("/orders/payment")
    assert (reply.status, reply.json(), reply.headers["x-middleware"]) == (
        503,
        {"error": "cannot retry: card declined", "path": "/orders/payment"},
        "saw it",
    )
    reply = client.get("/orders/conflict")
    assert (reply.status, reply.json(), reply.headers["x-middleware"]) == (
        409,
        {"detail": "conflict on /orders/conflict"},
        "saw it",
    )
    reply = client.get("/orders/fraud")
    assert (reply.status, reply.text) == (500, "Internal Server Error")
    assert "x-middleware" not in reply.headers
    assert client.get("/orders/paid").json() == {"ok": "paid"}  # the loop keeps serving
    # Middleware's own exceptions go to the handlers too, with the request (outside the chain: the
    # outer middleware does not see that response).
    reply = client.request("GET", "/orders/paid", headers={"X-Token": "bad"})
    assert (reply.status, reply.json()) == (401, {"detail": "bad token for /orders/paid"})
    reply = client.request("GET", "/orders/paid", headers={"X-Token": "stale"})
    assert (reply.status, reply.json()) == (503, {"error": "token refresh service", "path": "/orders/paid"})
    server.stop()
    assert "Exception in handler for GET /orders/{kind}" in server.stderr
    assert "OutOfStock: cannot retry: flagged: stolen card" in server.stderr
    assert "card declined" not in server.stderr  # handled exceptions are not logged as failures


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


def make_api_with_middleware():
    api = percore.App(title="Shop")
    calls = []

    @api.middleware
    async def outer(request, call_next):
        calls.append(f"outer {request.path}")
        response = await call_next(request)
        response.headers.append(("x-outer", "1"))
        return response

    @api.middleware
    async def inner(request, call_next):
        calls.append("inner")
        if request.headers.get("x-block"):
            return percore.PlainTextResponse("blocked", status_code=403)
        return await call_next(request)

    @api.get("/items/{item_id}", status_code=201)
    async def item(item_id: int, request: percore.Request):
        """Read one item."""
        return {"item_id": item_id, "path": request.path}

    @api.get("/login")
    def login():
        response = percore.RedirectResponse("/home")
        response.set_cookie("session", "abc", httponly=True)
        return response

    return api, calls


def test_middleware_wraps_handlers_in_order():
    from percore.testing import TestClient

    api, calls = make_api_with_middleware()
    with TestClient(api) as client:
        reply = client.get("/items/4")
        assert (reply.status_code, reply.json(), reply.headers["x-outer"]) == (
            201,
            {"item_id": 4, "path": "/items/4"},
            "1",
        )
        assert calls == ["outer /items/4", "inner"]
        blocked = client.get("/items/4", headers={"X-Block": "yes"})
        assert (blocked.status_code, blocked.text, blocked.headers["x-outer"]) == (403, "blocked", "1")
        assert client.get("/items/x").status_code == 422  # binding still happens before middleware


def test_redirects_and_cookies():
    from percore.testing import TestClient

    api, _ = make_api_with_middleware()
    with TestClient(api) as client:
        reply = client.get("/login")
        assert reply.status_code == 307
        assert reply.headers["location"] == "/home"
        assert reply.headers["set-cookie"].startswith("session=abc")
        assert "HttpOnly" in reply.headers["set-cookie"]


def test_cors_preflight_and_simple_requests():
    from percore.testing import TestClient

    api = percore.App()
    api.add_cors(allow_origins=["https://shop.example"], allow_credentials=True)

    @api.post("/orders")
    async def orders(payload: dict):
        return payload

    with TestClient(api) as client:
        preflight = client.request(
            "OPTIONS",
            "/orders",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        simple = client.post("/orders", json={"a": 1}, headers={"Origin": "https://shop.example"})
        assert simple.json() == {"a": 1}
        assert simple.headers["access-control-allow-origin"] == "https://shop.example"
        stranger = client.post("/orders", json={}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers
        denied = client.request(
            "OPTIONS",
            "/orders",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert denied.status_code == 400


def test_const_routes_are_computed_once_and_served_from_rust():
    from percore.testing import TestClient

    api = percore.App()
    runs = []

    @api.get("/health", const=True)
    async def health():
        runs.append(1)
        return {"status": "ok"}

    @api.get("/banner", const=True)
    def banner():
        runs.append(1)
        return percore.PlainTextResponse("hello", status_code=203, headers={"x-const": "yes"})

    with TestClient(api) as client:
        for _ in range(5):
            assert client.get("/health").json() == {"status": "ok"}
            reply = client.get("/banner")
            assert (reply.status_code, reply.text, reply.headers["x-const"]) == (203, "hello", "yes")
    assert len(runs) == 2


def test_a_const_route_cannot_take_parameters():
    api = percore.App()
    with pytest.raises(percore.ConfigurationError, match="const route"):
        api.get("/x/{y}", const=True)(lambda y: y)


def test_router_middleware_wraps_only_its_routes_inside_app_middleware():
    from percore.testing import TestClient

    api = percore.App(openapi_url=None)
    order = []

    @api.middleware
    async def app_layer(request, call_next):
        order.append("app")
        return await call_next(request)

    admin = percore.Router(prefix="/admin")

    @admin.middleware
    async def require_token(request, call_next):
        order.append("admin")
        if request.headers.get("x-token") != "s3cret":
            return percore.JSONResponse({"detail": "forbidden"}, status_code=403)
        return await call_next(request)

    @admin.get("/stats")
    async def stats():
        return {"ok": True}

    @api.get("/public")
    async def public(request: percore.Request):
        return {"query": request.query_params, "pairs": request.query_list, "cookies": request.cookies}

    api.include_router(admin)
    with TestClient(api) as client:
        assert client.get("/admin/stats").status_code == 403
        assert client.get("/admin/stats", headers={"X-Token": "s3cret"}).json() == {"ok": True}
        assert order == ["app", "admin", "app", "admin"]
        order.clear()
        reply = client.get("/public?a=1&a=2&b=x+y", headers={"Cookie": "session=abc; theme=dark"})
        assert reply.json() == {
            "query": {"a": "2", "b": "x y"},
            "pairs": [["a", "1"], ["a", "2"], ["b", "x y"]],
            "cookies": {"session": "abc", "theme": "dark"},
        }
        assert order == ["app"]


def test_a_const_route_cannot_stream():
    api = percore.App(openapi_url=None)
    api.get("/file", const=True)(lambda: percore.FileResponse(__file__))
    with pytest.raises(percore.ConfigurationError, match="cannot stream"):
        percore.server.Server(api, ServerConfig(port=0))
