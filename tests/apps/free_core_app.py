"""The app tests/test_free_core.py serves: CPU-bound and blocking handlers that record when they ran."""

import asyncio
import contextvars
import threading
import time
from pathlib import Path

import percore

api = percore.App()
request_tag = contextvars.ContextVar("request_tag", default=None)

#: How many handlers of each kind have begun, so a test waits for one instead of sleeping.
started: dict[str, int] = {}
_lock = threading.Lock()


def _begin(kind: str) -> float:
    with _lock:
        started[kind] = started.get(kind, 0) + 1
    return time.monotonic()


def _spin(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i
    return total


def _ran(kind: str, began: float, request: percore.Request) -> dict:
    return {
        "kind": kind,
        "start": began,
        "end": time.monotonic(),
        "loop": request.loop_index,
        # The OS thread's name (Rust names the loop and pool threads; Python calls them "Dummy-N").
        "thread": Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip(),
    }


@api.get("/spin-sync")
def spin_sync(request: percore.Request, rounds: int = 2_000_000):
    began = _begin("spin-sync")
    _spin(rounds)
    return _ran("spin-sync", began, request)


@api.get("/spin-async")
async def spin_async(request: percore.Request, rounds: int = 2_000_000, marker: str = ""):
    began = _begin("spin-async")
    if marker:  # tells a test that this handler is running, without a request that would need a loop
        Path(marker).write_text("started")
    _spin(rounds)
    return _ran("spin-async", began, request)


@api.get("/spin-inline", inline=True)
def spin_inline(request: percore.Request, rounds: int = 2_000_000):
    began = _begin("spin-inline")
    _spin(rounds)
    return _ran("spin-inline", began, request)


@api.get("/block")
def block(request: percore.Request, seconds: float):
    """Blocks its thread the way a sync driver does."""
    began = _begin("block")
    time.sleep(seconds)
    return _ran("block", began, request)


@api.get("/now")
async def now():
    return {"at": time.monotonic()}


@api.get("/loop")
async def loop(request: percore.Request):
    return {"loop": request.loop_index}


@api.get("/started")
def started_counts():
    with _lock:
        return dict(started)


@api.get("/context-sync/{tag}")
def context_sync(tag: str):
    before = request_tag.get()
    request_tag.set(tag)
    return {"before": before, "after": request_tag.get()}


@api.get("/sync-returns-coroutine")
def sync_returns_coroutine():
    async def later():
        await asyncio.sleep(0)
        return {"stepped": "on the loop"}

    return later()


@api.get("/sync-raises")
def sync_raises():
    raise percore.HTTPException(418, "teapot")


@api.get("/sync-streams")
def sync_streams():
    return percore.StreamingResponse(iter([b"one ", b"two"]), media_type="text/plain")


wrapped = percore.Router(prefix="/wrapped")


@wrapped.middleware
async def tag(request, call_next):
    response = await call_next(request)
    response.headers.append(("x-wrapped", "yes"))
    return response


@wrapped.get("/block")
def wrapped_block(request: percore.Request, seconds: float):
    """Under middleware: still off the loop."""
    began = _begin("wrapped-block")
    time.sleep(seconds)
    return _ran("wrapped-block", began, request)


api.include_router(wrapped)
