"""Apps whose work outlives a graceful stop: they record, in the file named by PERCORE_TEST_EVENTS, what
happened in which order (handlers cancelled, WebSockets told to go away, lifespan/loop shutdown)."""

import asyncio
import os
import time

import percore

EVENTS = os.environ.get("PERCORE_TEST_EVENTS", os.devnull)


def record(event: str) -> None:
    with open(EVENTS, "a") as events:
        events.write(event + "\n")


native = percore.App()


@native.get("/stuck")
async def stuck():
    record("handler started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        record("handler cancelled")
        raise
    return {"finished": True}


@native.get("/sync-wait")
def sync_wait():
    """A `def` handler (run on the sync pool) that blocks until the test creates `<events>.release`."""
    record("sync handler started")
    deadline = time.monotonic() + 60
    while not os.path.exists(EVENTS + ".release") and time.monotonic() < deadline:
        time.sleep(0.02)
    record("sync handler finished")
    return {"finished": True}


@native.get("/ping")
def ping():
    return {"pong": True}


@native.on_loop_stop
async def loop_stopped(state):
    record("loop stop hook")


async def asgi(scope, receive, send):
    """Raw ASGI 3: /stuck never answers; /ws echoes until disconnected; /flood sends N frames; lifespan."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                record("lifespan shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        record("handler started")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            record("handler cancelled")
            raise
        return
    # websocket
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/flood":
        count = int(scope["query_string"] or b"0")
        sent = 0
        for sent in range(1, count + 1):
            await send({"type": "websocket.send", "bytes": sent.to_bytes(4, "big") * 4096})
            if sent % 500 == 0:
                record(f"sent {sent}")
        record(f"sent {sent}")
        await send({"type": "websocket.close", "code": 1000})
        return
    record("websocket open")
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record(f"websocket disconnect {message['code']}")
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
