"""A FastAPI app exercising what real apps use; served by percore and by uvicorn in test_asgi.py."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Cookie, Depends, FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel

background_log: list[str] = []


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield {"started_on_thread": threading.get_ident(), "greeting": "hello from lifespan"}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


class TeapotError(Exception):
    pass


@app.exception_handler(TeapotError)
async def teapot_handler(request: Request, error: TeapotError):
    return JSONResponse({"error": "teapot", "detail": str(error)}, status_code=418)


def pagination(offset: int = 0, limit: int = 10) -> dict:
    return {"offset": offset, "limit": limit}


@app.get("/json")
async def hello():
    return {"message": "Hello, World!"}


@app.get("/items/{item_id}")
async def read_item(
    item_id: int,
    q: str | None = None,
    page: Annotated[dict | None, Depends(pagination)] = None,
    user_agent: Annotated[str | None, Header()] = None,
    session: Annotated[str | None, Cookie()] = None,
):
    return {"item_id": item_id, "q": q, "page": page, "user_agent": user_agent, "session": session}


@app.post("/items", status_code=201)
async def create_item(item: Item):
    return {"created": item.model_dump()}


@app.get("/missing/{item_id}")
async def missing(item_id: int):
    raise HTTPException(status_code=404, detail=f"item {item_id} not found", headers={"X-Missing": "yes"})


@app.get("/teapot")
async def teapot():
    raise TeapotError("short and stout")


@app.get("/crash")
async def crash():
    raise ValueError("unhandled")


@app.get("/sync")
def sync_endpoint():
    return PlainTextResponse("from a def endpoint")


@app.post("/background")
async def with_background(tasks: BackgroundTasks, word: str = "ping"):
    tasks.add_task(background_log.append, word)
    return {"scheduled": word}


@app.get("/background-log")
async def read_background_log():
    return {"log": background_log}


@app.get("/stream")
async def stream(pause: float = 0.0):
    async def chunks():
        for n in range(3):
            yield f"chunk {n}\n"
            await asyncio.sleep(pause)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.post("/form")
async def form(name: Annotated[str, Form()], count: Annotated[int, Form()]):
    return {"name": name, "count": count}


@app.get("/state")
async def state(request: Request):
    return {
        "greeting": request.state.greeting,
        "same_thread": request.state.started_on_thread == threading.get_ident(),
    }


@app.get("/cookie")
async def set_cookie():
    response = JSONResponse({"ok": True})
    response.set_cookie("session", "abc123", httponly=True)
    return response
