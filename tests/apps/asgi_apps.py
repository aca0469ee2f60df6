"""Raw ASGI apps that break the protocol, fail, or speak only part of it."""

from __future__ import annotations


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
