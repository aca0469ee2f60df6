"""A plain ASGI app for tests/test_timeouts.py: it reads request bodies chunk by chunk and records whether
`receive()` told it the client was gone, and serves large responses for clients that do not read them."""

from __future__ import annotations

import asyncio
import json

# What the app saw, per path: "complete" or "disconnect".
events: list[str] = []

BIG = b"x" * (1 << 20)


async def _respond(send, status: int, body: bytes, more: bool = False) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def _read_body(receive) -> int | None:
    """The body's length, or None when receive() said the client is gone."""
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            return received


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/upload":  # reads the whole body, then answers with its length
        received = await _read_body(receive)
        events.append(f"upload {'disconnect' if received is None else 'complete'}")
        if received is not None:
            await _respond(send, 200, str(received).encode())
    elif path == "/answer-then-read":  # starts a streamed response, then reads the body
        await _respond(send, 200, b"started;", more=True)
        received = await _read_body(receive)
        events.append(f"answer-then-read {'disconnect' if received is None else 'complete'}")
        await send({"type": "http.response.body", "body": b"done", "more_body": False})
    elif path == "/big":  # 1 MiB
        await _respond(send, 200, BIG)
    elif path == "/endless":  # streams 64 KiB chunks until the client is gone
        await send({"type": "http.response.start", "status": 200, "headers": []})
        gone = asyncio.Event()

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        while not gone.is_set():
            await send({"type": "http.response.body", "body": BIG[: 1 << 16], "more_body": True})
            await asyncio.sleep(0)  # a send to a client that left returns at once: let the watcher run
        events.append("endless stopped")
        await watcher
    elif path == "/events":
        await _respond(send, 200, json.dumps(events).encode())
    else:
        await _respond(send, 404, b"not found")
