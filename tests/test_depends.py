"""Dependencies (``Depends``): the graph resolved at registration, per-request calls, ``yield`` cleanup,
caching, router/app dependencies, errors; side by side with FastAPI on the same app
(tests/apps/depends_app.py), and over a real ``runtime serve`` socket.

No ``from __future__ import annotations``: the handlers here annotate with local dependencies."""

import base64
import socket
import time
from typing import Annotated

import percore
import pytest
from percore import Depends, Header, HTTPException
from percore.testing import TestClient

from .apps import depends_app

APP = "tests.apps.depends_app:api"


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def both():
    """(percore TestClient, FastAPI TestClient) on the same app (FastAPI's TestClient needs httpx, which
    tests/requirements.txt installs on both builds)."""
    import fastapi.testclient as fastapi_testclient

    with TestClient(depends_app.make("percore")) as ours:
        theirs = fastapi_testclient.TestClient(depends_app.make("fastapi"), raise_server_exceptions=False)
        yield ours, theirs


def settled_events(client) -> list[str]:
    """The app's event log once the last request's cleanup ran (percore closes ``yield`` dependencies
    after the response, so wait until the log stops growing past its last close)."""
    events = wait_for(lambda: (e := client.get("/events").json()) and e[-1] == "close" and e, what="cleanup")
    client.delete("/events")
    return events


REQUESTS = [
    ("GET", "/items?q=x&limit=3", {"x-token": "secret"}),
    ("GET", "/items", {}),  # missing header of a nested dependency: 422 at ["header", "x-token"]
    ("GET", "/pager?size=x&page=y", {}),  # two errors, in FastAPI's order
    ("POST", "/orders/x", {}),  # path, header and body errors across the graph
    ("GET", "/items", {"x-token": "wrong"}),  # HTTPException raised in a dependency
    ("GET", "/things/5", {}),  # a path parameter only a dependency declares
    ("GET", "/things/five", {}),
    ("POST", "/totals", {}),  # a body only a dependency declares (not embedded, as in FastAPI)
    ("GET", "/cached", {}),
    ("GET", "/uncached", {}),
    ("GET", "/pager?page=3", {}),
    ("GET", "/pager?size=x", {}),
    ("GET", "/admin/panel", {}),
    ("GET", "/admin/panel", {"x-router": "deny", "x-include": "deny", "x-route": "deny"}),
    ("GET", "/admin/panel", {"x-include": "deny", "x-route": "deny"}),
    ("GET", "/admin/panel", {"x-route": "deny"}),
    ("GET", "/sec/bearer", {}),
    ("GET", "/sec/bearer", {"authorization": "Bearer abc"}),
    ("GET", "/sec/bearer", {"authorization": "Basic abc"}),
    ("GET", "/sec/bearer", {"authorization": "Bearer"}),
    ("GET", "/sec/basic", {}),
    ("GET", "/sec/basic", {"authorization": "Basic " + base64.b64encode(b"ada:pw:x").decode()}),
    ("GET", "/sec/basic", {"authorization": "Basic " + base64.b64encode(b"nocolon").decode()}),
    ("GET", "/sec/basic", {"authorization": "Basic !!!"}),
    ("GET", "/sec/header", {}),
    ("GET", "/sec/header", {"x-api-key": "k1"}),
    ("GET", "/sec/cookie", {}),
    ("GET", "/sec/cookie", {"cookie": "session=c1"}),
    ("GET", "/sec/query", {}),
    ("GET", "/sec/query?api_key=q1", {}),
    ("GET", "/sec/oauth2", {}),
    ("GET", "/sec/oauth2", {"authorization": "bearer t1"}),
    ("GET", "/sec/digest", {}),
    ("GET", "/sec/digest", {"authorization": "Digest username=ada"}),
    ("GET", "/sec/digest", {"authorization": "Bearer x"}),
    ("GET", "/sec/scopes", {}),
    ("GET", "/sec/scopes", {"authorization": "Bearer s1"}),
    ("GET", "/sec/optional", {}),
    ("GET", "/sec/optional", {"authorization": "Bearer o1"}),
    ("GET", "/model", {}),
    ("GET", "/model/exclude-none", {}),
    ("GET", "/model/list", {}),
    ("GET", "/model/invalid", {}),
    ("GET", "/model/dataclass", {}),
]


@pytest.mark.parametrize(
    ("method", "path", "headers"), REQUESTS, ids=[f"{m} {p} {h}" for m, p, h in REQUESTS]
)
def test_same_answers_as_fastapi(both, method, path, headers):
    ours, theirs = both
    ours.delete("/events")
    theirs.delete("/events")
    mine = ours.request(method, path, headers=headers)
    reference = theirs.request(method, path, headers=headers)
    if path == "/totals":  # and with bodies, valid and not
        for body in ({"item": "pen", "quantity": 3}, {"item": "pen"}):
            assert ours.post(path, json=body).json() == theirs.post(path, json=body).json()
    assert mine.status_code == reference.status_code, (mine.content, reference.content)
    if reference.status_code == 500:
        return  # bodies differ by design (plain text in both, different wording)
    assert mine.json() == reference.json()
    assert mine.headers.get("www-authenticate") == reference.headers.get("www-authenticate")


def test_yield_dependencies_and_background_tasks_as_fastapi(both):
    ours, theirs = both
    for client in both:
        client.delete("/events")
    order = {"item": "pen", "quantity": 2}
    mine = ours.post("/orders/7?fail=1", json=order, headers={"x-token": "secret"})
    reference = theirs.post("/orders/7", json=order, headers={"x-token": "secret"})
    assert (mine.status_code, mine.json()) == (reference.status_code, reference.json())
    assert mine.json()["session"] == "async session"
    expected = ["open", "async open", "handler", "task 1", "task 3", "async close", "close"]
    assert settled_events(theirs) == expected
    # Background tasks run in order (a failing one is logged and skipped, where FastAPI would stop and
    # throw its error into the dependencies), then cleanup innermost first.
    assert settled_events(ours) == expected

    for path, status, rollback in (("/conflict", 409, "HTTPException"), ("/crash", 500, "ValueError")):
        assert ours.get(path).status_code == theirs.get(path).status_code == status
        expected = [
            "open",
            "async open",
            f"async rollback {rollback}",
            "async close",
            f"rollback {rollback}",
            "close",
        ]
        assert settled_events(theirs) == expected
        assert settled_events(ours) == expected


def test_openapi_lists_dependency_parameters_security_and_response_models(both):
    ours, theirs = both
    mine, reference = ours.get("/openapi.json").json(), theirs.get("/openapi.json").json()
    for path in ("/items", "/admin/panel", "/pager"):
        assert sorted(
            (p["name"], p["in"], p["required"]) for p in mine["paths"][path]["get"]["parameters"]
        ) == sorted(
            (p["name"], p["in"], p["required"]) for p in reference["paths"][path]["get"]["parameters"]
        )
    assert mine["components"]["securitySchemes"] == reference["components"]["securitySchemes"]
    for path in (
        "/sec/bearer",
        "/sec/basic",
        "/sec/header",
        "/sec/cookie",
        "/sec/query",
        "/sec/oauth2",
        "/sec/digest",
    ):
        operation = mine["paths"][path]["get"]
        assert operation["security"] == reference["paths"][path]["get"]["security"]
        assert "parameters" not in operation  # the schemes' own header/cookie/query stay private
    ok = mine["paths"]["/model"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PublicUser"}
    assert set(mine["components"]["schemas"]["PublicUser"]["properties"]) == {"name", "email"}
    body = mine["paths"]["/orders/{order_id}"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}


def test_graph_is_resolved_at_registration():
    api = percore.App()

    def a(q: int = 0):
        return q

    def b(x: Annotated[int, Depends(a)]):
        return x

    @api.get("/x")
    def handler(one: Annotated[int, Depends(a)], two: Annotated[int, Depends(b)], q: int = 0):
        return one + two

    (route,) = api.routes
    # One Rust-bound parameter for the three declarations of q; one call of a (cached) per request.
    assert [(p.name, p.source) for p in route.params] == [("q", "query")]
    assert route.endpoint._percore_source.count("_percore_f0(") == 1
    with TestClient(api) as client:
        assert client.get("/x?q=4").json() == 8


def test_a_conflicting_name_is_a_configuration_error():
    api = percore.App()

    def a(q: int = 0):
        return q

    with pytest.raises(
        percore.ConfigurationError, match=r"parameter 'q' is declared differently by .*a.* and by"
    ):

        @api.get("/x")
        def handler(x: Annotated[int, Depends(a)], q: str = Header()):
            return x


def test_a_dependency_cycle_is_a_configuration_error():
    api = percore.App()

    def a(x=Depends(lambda: None)):
        return x

    def cyclic(y=None):
        return y

    cyclic.__defaults__ = (Depends(cyclic),)
    with pytest.raises(percore.ConfigurationError, match="dependency cycle"):
        api.get("/x")(lambda z=Depends(cyclic): z)


def test_two_bodies_across_the_graph_are_a_configuration_error():
    api = percore.App()

    def reads_body(payload: dict):
        return payload

    with pytest.raises(percore.ConfigurationError, match="only one parameter can be the request body"):

        @api.post("/x")
        def handler(other: list, d=Depends(reads_body)):
            return d


def test_a_route_without_dependencies_is_served_unwrapped():
    api = percore.App()

    @api.get("/plain")
    def plain(q: int = 0):
        return q

    assert api.routes[0].endpoint is None


def test_dependency_errors_go_through_exception_handlers():
    api = percore.App()

    class Denied(Exception):
        pass

    @api.exception_handler(Denied)
    def denied(request, error):
        return percore.JSONResponse({"denied": request.path}, status_code=451)

    async def guard(x_user: Annotated[str | None, Header()] = None):
        if x_user is None:
            raise Denied()
        if x_user == "teapot":
            raise HTTPException(418, "teapot", headers={"x-why": "tea"})
        return x_user

    @api.get("/guarded")
    def guarded(user: Annotated[str, Depends(guard)]):
        return {"user": user}

    with TestClient(api) as client:
        assert client.get("/guarded").json() == {"denied": "/guarded"}
        teapot = client.get("/guarded", headers={"x-user": "teapot"})
        assert (teapot.status_code, teapot.json(), teapot.headers["x-why"]) == (
            418,
            {"detail": "teapot"},
            "tea",
        )
        assert client.get("/guarded", headers={"x-user": "ada"}).json() == {"user": "ada"}


def test_middleware_sees_dependency_results_and_request_is_shared():
    api = percore.App()
    seen = []

    @api.middleware
    async def mark(request, call_next):
        response = await call_next(request)
        response.headers.append(("x-mw", "1"))
        return response

    def who(request: percore.Request):
        seen.append(request)
        return request.path

    @api.get("/who")
    def handler(path: Annotated[str, Depends(who)], req: percore.Request):
        return {"path": path, "same": req is seen[-1]}

    with TestClient(api) as client:
        reply = client.get("/who")
        assert reply.json() == {"path": "/who", "same": True}
        assert reply.headers["x-mw"] == "1"


def test_a_yield_dependency_that_never_yields_is_a_500():
    api = percore.App()

    def broken():
        if False:
            yield

    @api.get("/broken")
    def handler(x=Depends(broken)):
        return x

    with TestClient(api) as client:
        assert client.get("/broken").status_code == 500


# Over a real socket, on each build.


def test_served_dependencies_background_tasks_and_cleanup(serve):
    server = serve(APP)
    client = server.client()
    try:
        reply = client.request(
            "POST",
            "/orders/3?fail=1",
            body=b'{"item": "pen", "quantity": 1}',
            headers={"x-token": "secret", "content-type": "application/json"},
        )
        assert (reply.status, reply.json()["session"]) == (201, "async session")
        events = wait_for(lambda: (e := client.get("/events").json())[-1:] == ["close"] and e, what="cleanup")
        assert events == ["open", "async open", "handler", "task 1", "task 3", "async close", "close"]
        missing = client.get("/items")
        assert missing.status == 422
        assert [e["loc"] for e in missing.json()["detail"]] == [["header", "x-token"]]
    finally:
        client.close()
    assert "a failing background task" in wait_for(server.read_stderr, what="the task's log")


def test_served_cleanup_runs_when_the_client_disconnects(serve):
    server = serve(APP)
    control = server.client()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as gone:
            gone.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            wait_for(lambda: "slow started" in control.get("/events").json(), what="the handler")
        events = wait_for(
            lambda: (e := control.get("/events").json())[-1:] == ["close"] and e, what="cleanup"
        )
        assert events == ["open", "async open", "slow started", "async close", "close"]
    finally:
        control.close()


def test_a_fully_sync_graph_is_served_without_a_coroutine():
    api = percore.App()
    log = []

    def resource():
        log.append("open")
        yield "r"
        log.append("close")

    @api.get("/sync")
    def handler(r: Annotated[str, Depends(resource)], tasks: percore.BackgroundTasks):
        tasks.add_task(log.append, "task")
        return r

    assert not api.routes[0].endpoint._percore_source.startswith("async")
    with TestClient(api) as client:
        assert client.get("/sync").text == "r"
        wait_for(lambda: log == ["open", "task", "close"], what="cleanup")


def test_function_scoped_yield_dependencies_close_before_the_response():
    api = percore.App()
    log = []

    def request_scoped():
        yield "request"
        log.append("request closed")

    async def function_scoped():
        yield "function"
        log.append("function closed")

    def failing_exit():
        yield "x"
        raise HTTPException(409, "exit failed")

    @api.get("/scoped")
    def handler(
        r: Annotated[str, Depends(request_scoped)],
        f: Annotated[str, Depends(function_scoped, scope="function")],
    ):
        log.clear()
        return {"log": log}  # serialised after the function-scoped exit, before the request-scoped one

    @api.get("/exit-fails")
    def exit_fails(x: Annotated[str, Depends(failing_exit, scope="function")]):
        return x

    with TestClient(api) as client:
        assert client.get("/scoped").json() == {"log": ["function closed"]}
        wait_for(lambda: log == ["function closed", "request closed"], what="cleanup")
        failed = client.get("/exit-fails")
        assert (failed.status_code, failed.json()) == (409, {"detail": "exit failed"})


def test_a_request_scoped_generator_cannot_depend_on_a_function_scoped_one():
    api = percore.App()

    def inner():
        yield 1

    def outer(i: Annotated[int, Depends(inner, scope="function")]):
        yield i

    with pytest.raises(
        percore.ConfigurationError, match='cannot depend on dependencies with scope "function"'
    ):
        api.get("/x")(lambda o=Depends(outer): o)


def test_request_scoped_cleanup_runs_after_the_response_and_never_delays_it():
    import asyncio

    api = percore.App()
    log = []
    release = {}

    async def slow_cleanup():
        yield "value"
        # Waits for a later request: the response of the request that entered it must not wait too.
        release.setdefault("event", asyncio.Event())
        await release["event"].wait()
        log.append("closed")

    @api.get("/held")
    def held(v: Annotated[str, Depends(slow_cleanup)]):
        return v

    @api.get("/release")
    async def release_cleanup():  # on the loop: asyncio.Event is not thread-safe (a `def` runs on the sync pool)
        release["event"].set()

    with TestClient(api) as client:
        assert client.get("/held").text == "value"
        assert log == []
        client.get("/release")
        wait_for(lambda: log == ["closed"], what="cleanup")
