"""A Litestar app: typed path/query/header/cookie parameters, a msgspec-validated dataclass body,
dependencies, exceptions and a custom handler, lifespan state, background tasks, streaming, websockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from litestar import Litestar, Request, Response, WebSocket, get, post, websocket
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from litestar.response import Stream

events: list[str] = []


@dataclass
class Item:
    name: str
    price: float
    tags: list[str] = field(default_factory=list)


class Teapot(Exception):
    pass


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.loop_thread = threading.get_ident()
    app.state.started = True
    yield


async def pagination(limit: int = 10) -> dict:
    return {"limit": limit}


@get("/json")
async def json_endpoint() -> dict:
    return {"message": "Hello, World!"}


@get("/items/{item_id:int}", dependencies={"page": Provide(pagination)})
async def read_item(
    item_id: int,
    page: dict,
    q: str | None = None,
    user_agent: str = Parameter(header="User-Agent", default="none"),
    session: str | None = Parameter(cookie="session", default=None),
) -> dict:
    return {"item_id": item_id, "q": q, "page": page, "user_agent": user_agent, "session": session}


@post("/items")
async def create_item(data: Item) -> Item:
    return data


@get("/missing/{name:str}")
async def missing(name: str) -> None:
    raise NotFoundException(detail=f"no {name} here")


@get("/teapot")
async def teapot() -> None:
    raise Teapot("short and stout")


@get("/crash")
async def crash() -> None:
    raise RuntimeError("boom")


@get("/sync", sync_to_thread=False)
def sync_endpoint() -> dict:
    return {"sync": True}


@get("/stream")
async def stream() -> Stream:
    async def numbers() -> AsyncIterator[bytes]:
        for n in range(5):
            await asyncio.sleep(0)
            yield f"{n}\n".encode()

    return Stream(numbers(), media_type="text/plain")


@get("/background")
async def background() -> Response[dict]:
    async def later() -> None:
        await asyncio.sleep(0.01)
        events.append("background ran")

    return Response({"scheduled": True}, background=BackgroundTask(later))


@get("/events")
async def read_events() -> dict:
    return {"events": events}


@get("/state")
async def read_state(state: State, request: Request) -> dict:
    # app.state is one object for every loop: each loop's lifespan overwrote `loop_thread` (docs/asgi.md),
    # so only facts true on every loop are compared with uvicorn.
    return {"started": state.started}


@get("/state-thread")
async def read_state_thread(state: State) -> dict:
    return {"same_thread": state.loop_thread == threading.get_ident()}


@websocket("/ws")
async def echo_socket(socket: WebSocket) -> None:
    await socket.accept()
    while True:
        text = await socket.receive_text()
        if text == "bye":
            await socket.close(code=4000)
            return
        await socket.send_text(f"echo: {text}")


def teapot_handler(request: Request, exc: Teapot) -> Response:
    return Response({"teapot": str(exc)}, status_code=418)


app = Litestar(
    route_handlers=[
        json_endpoint,
        read_item,
        create_item,
        missing,
        teapot,
        crash,
        sync_endpoint,
        stream,
        background,
        read_events,
        read_state,
        read_state_thread,
        echo_socket,
    ],
    exception_handlers={Teapot: teapot_handler},
    lifespan=[lifespan],
    openapi_config=None,
)
