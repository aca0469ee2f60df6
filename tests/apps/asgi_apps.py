"""Raw ASGI apps that break the protocol, fail, or speak only part of it."""

from __future__ import annotations

import asyncio
import json
import types


async def misbehaving(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("no lifespan here")  # apps may reject lifespan: the server carries on
    path = scope["path"]
    if path == "/ok":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"fine"})
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"oops"})
    elif path == "/start-twice":
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.start", "status": 200})
    elif path == "/bad-status":
        await send({"type": "http.response.start", "status": "200"})
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [("x", 1)]})
    elif path == "/no-response":
        return
    elif path == "/raise":
        raise RuntimeError("app crashed")
    elif path == "/raise-mid-stream":
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("crashed while streaming")
    elif path == "/unknown-message":
        await send({"type": "http.response.trailers"})
    elif path == "/body-after-complete":
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"done"})
        await send({"type": "http.response.body", "body": b"again"})
    else:
        await send({"type": "http.response.start", "status": 404})
        await send({"type": "http.response.body", "body": b"not found"})


def _drive_by_hand(awaitable):
    """What some libraries do: step an awaitable's iterator themselves instead of awaiting it."""
    iterator = awaitable.__await__()
    try:
        iterator.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("a completed awaitable yielded")


@types.coroutine
def _yield_from(awaitable):
    return (yield from awaitable.__await__())


async def awaitables(scope, receive, send):
    """Awaits ``receive()`` and ``send()`` in every way apps and libraries do, and reports what each gave."""
    if scope["type"] != "http":
        return
    seen = {}
    message = _drive_by_hand(receive())
    seen["receive by hand"] = [message["type"], message["body"].decode(), message["more_body"]]
    seen["await send"] = await send({"type": "http.response.start", "status": 200})
    seen["send by hand"] = _drive_by_hand(
        send({"type": "http.response.body", "body": b"1", "more_body": True})
    )
    seen["send as a task"] = await asyncio.ensure_future(
        send({"type": "http.response.body", "body": b"2", "more_body": True})
    )
    seen["send with wait_for"] = await asyncio.wait_for(
        send({"type": "http.response.body", "body": b"3", "more_body": True}), 5
    )
    seen["send via yield from"] = await _yield_from(
        send({"type": "http.response.body", "body": b"4", "more_body": True})
    )
    await send({"type": "http.response.body", "body": b"|" + json.dumps(seen).encode()})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b""})


class Asgi2App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


not_callable = {"an": "app"}
