"""The native API's features, served end to end by tests/test_params.py and tests/test_app.py."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from typing import Annotated, TypedDict

import percore
from percore import Cookie, Header, HTTPException, Query
from pydantic import BaseModel

api = percore.App()


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@dataclass
class Point:
    x: int
    y: int


class Movie(TypedDict):
    title: str
    year: int


@api.get("/typed/{number}/{ratio}/{flag}/{ident}")
async def typed(number: int, ratio: float, flag: bool, ident: uuid.UUID):
    return {
        "number": number,
        "ratio": ratio,
        "flag": flag,
        "ident": str(ident),
        "types": [type(number).__name__, type(ratio).__name__, type(flag).__name__, type(ident).__name__],
    }


@api.get("/search")
def search(q: str, limit: int = 10, tags: list[str] = [], exact: bool | None = None):  # noqa: B006
    tags.append("seen")  # must not leak into the next request's default
    return {"q": q, "limit": limit, "tags": tags, "exact": exact}


@api.get("/ids")
async def ids(ids: Annotated[list[int], Query(alias="id")]):
    return {"ids": ids}


@api.get("/headers")
async def headers(
    x_token: str = Header(), user_agent: str | None = Header(None), session: str | None = Cookie(None)
):
    return {"x_token": x_token, "user_agent": user_agent, "session": session}


@api.post("/items", status_code=201)
async def create_item(item: Item):
    return {"name": item.name, "price": item.price, "tags": item.tags, "type": type(item).__name__}


@api.post("/points")
def create_point(point: Point):
    return {"x": point.x, "y": point.y, "type": type(point).__name__}


@api.post("/movies")
async def create_movie(movie: Movie):
    return movie


@api.post("/raw")
async def raw(payload: dict):
    return {"keys": sorted(payload)}


@api.post("/optional-body")
async def optional_body(payload: dict | None = None):
    return {"payload": payload}


@api.post("/request-json")
async def request_json(request: percore.Request):
    return {"echo": await request.json()}


@api.get("/teapot/{kind}")
async def teapot(kind: str):
    if kind == "http":
        raise HTTPException(418, "I'm a teapot", headers={"X-Tea": "earl grey"})
    if kind == "custom":
        raise OutOfTea("no more oolong")
    raise ValueError("a plain bug")


class OutOfTea(Exception):
    pass


@api.exception_handler(OutOfTea)
async def out_of_tea(request: percore.Request, error: OutOfTea):
    await asyncio.sleep(0.01)  # handlers may await (e.g. to report the error somewhere)
    return percore.JSONResponse({"error": str(error), "path": request.path}, status_code=503)


@api.on_loop_start
async def open_resources(state: dict):
    await asyncio.sleep(0)
    state["thread"] = threading.get_ident()
    state["pool"] = f"pool-for-{threading.current_thread().name}"


@api.get("/state")
async def state(request: percore.Request):
    return {"same_thread": request.state["thread"] == threading.get_ident(), "loop": request.loop_index}


users = percore.Router(prefix="/users")


@users.get("/{user_id}")
async def get_user(user_id: int):
    return {"user_id": user_id}


@users.delete("/{user_id}", status_code=204)
async def delete_user(user_id: int):
    return None


api.include_router(users)


stream_events: list[str] = []


@api.get("/stream")
async def stream(pause: float = 0.0, fail: bool = False):
    async def numbers():
        try:
            for n in range(5):
                yield f"{n};"
                await asyncio.sleep(pause)
            if fail:
                raise RuntimeError("the producer broke")
        finally:
            stream_events.append("closed")

    return percore.StreamingResponse(numbers(), media_type="text/plain")


@api.get("/stream-sync")
def stream_sync():
    return percore.StreamingResponse((f"line {n}\n".encode() for n in range(3)), media_type="text/plain")


@api.get("/endless")
async def endless():
    async def ticks():
        try:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.02)
        finally:
            stream_events.append("endless closed")

    return percore.StreamingResponse(ticks())


@api.get("/stream-events")
async def read_stream_events():
    return {"events": stream_events}


@api.get("/file")
def file():
    return percore.FileResponse(__file__, filename="native_api.py")
