"""One app written for both percore and FastAPI (``make("percore")`` / ``make("fastapi")``): dependencies,
``yield`` dependencies, background tasks, security schemes and ``response_model``.
tests/test_depends.py sends both the same requests and compares the answers; ``api`` is the percore one,
served over real sockets.

No ``from __future__ import annotations`` here: the annotations name classes local to ``make``.
"""

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel


class Order(BaseModel):
    item: str
    quantity: int


class PublicUser(BaseModel):
    name: str
    email: str | None = None


@dataclass
class Point:
    x: int
    y: int


def make(framework: str) -> Any:
    if framework == "percore":
        import percore as fw
        from percore import security

        app = fw.App(dependencies=[])
        Router = fw.Router
    else:
        import fastapi as fw
        from fastapi import security

        app = fw.FastAPI()
        Router = fw.APIRouter
    Depends, Header = fw.Depends, fw.Header
    HTTPException, BackgroundTasks, Request = fw.HTTPException, fw.BackgroundTasks, fw.Request

    events: list[str] = []
    calls = {"counted": 0}
    gate = asyncio.Event

    def common(q: str | None = None, limit: int = 10):
        return {"q": q, "limit": limit}

    async def token(x_token: Annotated[str, Header()]):
        if x_token != "secret":
            raise HTTPException(403, "bad token")
        return x_token

    async def user(tok: Annotated[str, Depends(token)], c: Annotated[dict, Depends(common)]):
        return {"token": tok, "common": c}

    def counted():
        calls["counted"] += 1
        return calls["counted"]

    def first(n: Annotated[int, Depends(counted)]):
        return n

    def second(n: Annotated[int, Depends(counted)]):
        return n

    def session():
        events.append("open")
        try:
            yield "session"
        except Exception as error:
            events.append(f"rollback {type(error).__name__}")
            raise
        finally:
            events.append("close")

    async def async_session(s: Annotated[str, Depends(session)]):
        events.append("async open")
        try:
            yield f"async {s}"
        except Exception as error:
            events.append(f"async rollback {type(error).__name__}")
            raise
        finally:
            events.append("async close")

    class Pager:
        def __init__(self, page: int = 1, size: int = 20):
            self.page = page
            self.size = size

    @app.get("/items")
    def items(c: Annotated[dict, Depends(common)], u: Annotated[dict, Depends(user)]):
        return {"common": c, "user": u, "shared": c is u["common"]}

    @app.get("/cached")
    def cached(a: Annotated[int, Depends(first)], b: Annotated[int, Depends(second)]):
        return {"same": a == b}

    @app.get("/uncached")
    def uncached(a: Annotated[int, Depends(counted)], b: Annotated[int, Depends(counted, use_cache=False)]):
        return {"same": a == b}

    @app.get("/pager")
    def pager(p: Annotated[Pager, Depends()]):
        return {"page": p.page, "size": p.size}

    @app.post("/orders/{order_id}", status_code=201)
    async def create_order(
        order_id: int,
        order: Order,
        u: Annotated[dict, Depends(user)],
        s: Annotated[str, Depends(async_session)],
        tasks: BackgroundTasks,
        fail: bool = False,
    ):
        events.append("handler")
        tasks.add_task(events.append, "task 1")
        if fail:  # percore logs it and runs the next task; FastAPI would stop here
            tasks.add_task(failing_task)
        tasks.add_task(async_task, "task 3")
        return {"order_id": order_id, "order": order.model_dump(), "user": u["token"], "session": s}

    def failing_task():
        raise RuntimeError("a failing background task")

    async def async_task(name: str):
        await asyncio.sleep(0)
        events.append(name)

    def thing(thing_id: int):
        return {"id": thing_id}

    @app.get("/things/{thing_id}")
    def read_thing(t: Annotated[dict, Depends(thing)]):
        return t

    def order_total(order: Order):
        return order.quantity * 2

    @app.post("/totals")
    def totals(total: Annotated[int, Depends(order_total)], q: str | None = None):
        return {"total": total, "q": q}

    @app.get("/conflict")
    def conflict(s: Annotated[str, Depends(async_session)]):
        raise HTTPException(409, "conflict")

    @app.get("/crash")
    def crash(s: Annotated[str, Depends(async_session)]):
        raise ValueError("crash")

    @app.get("/events")
    def read_events():
        return list(events)

    @app.delete("/events")
    def clear_events():
        events.clear()
        calls["counted"] = 0

    @app.get("/slow")
    async def slow(s: Annotated[str, Depends(async_session)], request: Request):
        # Never finishes on its own: the client disconnects and the request is cancelled.
        events.append("slow started")
        await gate().wait()

    def router_check(x_router: Annotated[str | None, Header()] = None):
        if x_router == "deny":
            raise HTTPException(401, "router says no")

    def include_check(x_include: Annotated[str | None, Header()] = None):
        if x_include == "deny":
            raise HTTPException(402, "include says no")

    def route_check(x_route: Annotated[str | None, Header()] = None):
        if x_route == "deny":
            raise HTTPException(406, "route says no")

    admin = Router(prefix="/admin", dependencies=[Depends(router_check)])

    @admin.get("/panel", dependencies=[Depends(route_check)])
    def panel():
        return {"panel": True}

    app.include_router(admin, dependencies=[Depends(include_check)])

    bearer = security.HTTPBearer()
    basic = security.HTTPBasic(realm="shop")
    key_header = security.APIKeyHeader(name="X-API-Key")
    key_cookie = security.APIKeyCookie(name="session")
    key_query = security.APIKeyQuery(name="api_key")
    oauth2 = security.OAuth2PasswordBearer(tokenUrl="token")
    optional = security.HTTPBearer(auto_error=False, scheme_name="OptionalBearer")
    digest = security.HTTPDigest()

    @app.get("/sec/bearer")
    def sec_bearer(creds: Annotated[security.HTTPAuthorizationCredentials, Depends(bearer)]):
        return {"scheme": creds.scheme, "credentials": creds.credentials}

    @app.get("/sec/basic")
    def sec_basic(creds: Annotated[security.HTTPBasicCredentials, Depends(basic)]):
        return {"username": creds.username, "password": creds.password}

    @app.get("/sec/header")
    def sec_header(key: Annotated[str, Depends(key_header)]):
        return {"key": key}

    @app.get("/sec/cookie")
    def sec_cookie(key: Annotated[str, Depends(key_cookie)]):
        return {"key": key}

    @app.get("/sec/query")
    def sec_query(key: Annotated[str, Depends(key_query)]):
        return {"key": key}

    @app.get("/sec/oauth2")
    def sec_oauth2(tok: Annotated[str, Depends(oauth2)]):
        return {"token": tok}

    @app.get("/sec/digest")
    def sec_digest(creds: Annotated[security.HTTPAuthorizationCredentials, Depends(digest)]):
        return {"scheme": creds.scheme, "credentials": creds.credentials}

    def scoped_user(security_scopes: security.SecurityScopes, tok: Annotated[str, Depends(oauth2)]):
        return {"scopes": security_scopes.scopes, "scope_str": security_scopes.scope_str, "token": tok}

    @app.get("/sec/scopes")
    def sec_scopes(
        a: Annotated[dict, fw.Security(scoped_user, scopes=["items:read"])],
        b: Annotated[dict, fw.Security(scoped_user, scopes=["me"])],
    ):
        return {"a": a, "b": b}

    @app.get("/sec/optional")
    def sec_optional(creds: Annotated[Any, Depends(optional)]):
        return {"credentials": None if creds is None else creds.credentials}

    @app.get("/model", response_model=PublicUser)
    def model():
        return {"name": "ada", "email": None, "password": "hunter2"}

    @app.get("/model/exclude-none", response_model=PublicUser, response_model_exclude_none=True)
    def model_exclude_none():
        return {"name": "ada", "email": None, "password": "hunter2"}

    @app.get("/model/list", response_model=list[PublicUser])
    def model_list():
        return [{"name": "a", "password": "x"}, PublicUser(name="b", email="b@x")]

    @app.get("/model/invalid", response_model=PublicUser)
    def model_invalid():
        return {"email": "no name"}

    @app.get("/model/dataclass", response_model=Point)
    def model_dataclass():
        return {"x": 1, "y": 2, "z": 3}

    app.state_events = events  # type: ignore[attr-defined]
    return app


api = make("percore")
