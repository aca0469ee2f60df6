"""The app the --workers tests serve: it says which process answered."""

import asyncio
import json
import os
import signal
import threading
import time

import percore

api = percore.App()


@api.get("/pid")
async def pid():
    return {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0))}


@api.get("/hold")
async def hold(marker: str, seconds: float):
    """Writes ``marker`` once the request runs (so a test knows it is in flight), then sleeps."""
    with open(marker, "w") as file:
        file.write(str(os.getpid()))
    await asyncio.sleep(seconds)
    return {"pid": os.getpid()}


@api.get("/block", inline=True)
def block(marker: str, seconds: float):
    """Like /hold, but blocking the loop thread itself (``inline``: not on the sync pool): the worker's loop
    (tests run one per worker) accepts nothing meanwhile."""
    with open(marker, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(seconds)
    return {"pid": os.getpid()}


_startups = 0
_startups_lock = threading.Lock()


async def asgi(scope, receive, send):
    """An ASGI app whose every response says how many lifespan startups its process ran."""
    global _startups
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with _startups_lock:
                    _startups += 1
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"pid": os.getpid(), "startups": _startups}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


@api.get("/sigterm-self")
async def sigterm_self():
    """Sends SIGTERM to this process and answers: the signal comes while the main thread waits on the loops
    (0.2 s slices that do not look at signals), so the response is almost always counted before the main
    thread sees the signal."""
    os.kill(os.getpid(), signal.SIGTERM)
    return {"pid": os.getpid()}
