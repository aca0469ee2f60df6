"""A Starlette app: routing, middleware, streaming, files, lifespan state and raw scope access."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

FILE = os.path.join(tempfile.gettempdir(), f"percore-starlette-{os.getpid()}.bin")
FILE_BYTES = bytes(range(256)) * 1024  # 256 KiB, several read chunks

disconnects: list[str] = []
waiting_for_disconnect: list[None] = []  # one entry per /wait-for-disconnect handler that has begun waiting


@asynccontextmanager
async def lifespan(app):
    with open(FILE, "wb") as f:
        f.write(FILE_BYTES)
    yield {"loop_thread": threading.get_ident()}


async def plaintext(request):
    return PlainTextResponse("Hello, World!")


async def headers(request):
    return JSONResponse(
        {
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
            "path": request.scope["path"],
            "raw_path": request.scope["raw_path"].decode(),
            "root_path": request.scope["root_path"],
            "query_string": request.scope["query_string"].decode(),
            "http_version": request.scope["http_version"],
            "method": request.method,
            "same_thread": request.state.loop_thread == threading.get_ident(),
        }
    )


async def whoami(request):
    # The client and scheme after proxy headers (tests/test_proxies.py); a direct peer's port is random.
    # No client on a Unix socket (tests/test_sockets.py) unless a trusted proxy names one.
    host, port = request.client or (None, None)
    shown_port = "ephemeral" if host == "127.0.0.1" and port else port
    return JSONResponse(
        {
            "client": [host, shown_port],
            "scheme": request.url.scheme,
            "url": str(request.url_for("whoami")),
        }
    )


async def addresses(request):
    # The peer and the listening address, as the server put them in the scope (tests/test_sockets.py).
    return JSONResponse({"client": request.scope["client"], "server": request.scope["server"]})


async def echo(request):
    body = await request.body()
    return PlainTextResponse(body, media_type="application/octet-stream")


async def stream(request):
    async def chunks():
        for n in range(5):
            yield f"part {n};".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


async def slow_stream(request):
    async def chunks():
        yield b"first;"
        await asyncio.sleep(1.0)
        yield b"second;"

    return StreamingResponse(chunks(), media_type="text/plain")


stream_events: list[str] = []


async def endless(request):
    async def chunks():
        try:
            n = 0
            while True:
                yield f"tick {n}\n".encode()
                n += 1
                await asyncio.sleep(0.02)
        finally:
            stream_events.append("stream closed")

    return StreamingResponse(chunks(), media_type="text/plain")


async def stream_log(request):
    return JSONResponse({"events": stream_events})


async def file(request):
    return FileResponse(FILE, media_type="application/octet-stream")


async def redirect(request):
    return RedirectResponse("/plaintext", status_code=307)


async def wait_for_disconnect(request):
    message = await request.receive()  # the (empty) body
    waiting_for_disconnect.append(None)
    message = await request.receive()  # blocks until the client goes away
    disconnects.append(message["type"])
    return PlainTextResponse("unreachable")


async def disconnect_log(request):
    return JSONResponse({"disconnects": disconnects, "waiting": len(waiting_for_disconnect)})


websocket_log: list[str] = []


async def chat(websocket: WebSocket):
    requested = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol="chat.v1" if "chat.v1" in requested else None)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                websocket_log.append(f"disconnect {message['code']}")
                return
            if message.get("text") is not None:
                if message["text"] == "close please":
                    await websocket.close(code=4001, reason="asked to")
                    return
                await websocket.send_text(f"echo: {message['text']}")
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect:
        websocket_log.append("disconnect")


async def patient(websocket: WebSocket):
    await websocket.accept()
    try:
        await asyncio.wait_for(websocket.receive_text(), 0.1)
    except TimeoutError:
        await websocket.send_text("timed out")  # the client waits for this: no race with the timeout
    text = await websocket.receive_text()  # the cancelled receive() must not break this one
    await websocket.send_text(f"late: {text}")
    await websocket.close()


async def websocket_whoami(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_json({"client": list(websocket.client), "scheme": websocket.url.scheme})
    await websocket.close()


async def denied(websocket: WebSocket):
    await websocket.close()


async def crashes(websocket: WebSocket):
    raise RuntimeError("websocket handler crashed before accepting")


async def unauthorized(websocket: WebSocket):
    # Starlette answers it with a denial response (the websocket.http.response extension).
    raise HTTPException(401, "no entry")


async def websocket_events(request):
    return JSONResponse({"log": websocket_log})


class AddHeader(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers["x-middleware"] = "ran"
        return response


app = Starlette(
    routes=[
        Route("/plaintext", plaintext),
        Route("/headers", headers),
        Route("/whoami", whoami),
        Route("/addresses", addresses),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/slow-stream", slow_stream),
        Route("/file", file),
        Route("/endless", endless),
        Route("/stream-log", stream_log),
        Route("/redirect", redirect),
        Route("/wait-for-disconnect", wait_for_disconnect),
        Route("/disconnects", disconnect_log),
        Route("/websocket-log", websocket_events),
        WebSocketRoute("/ws", chat),
        WebSocketRoute("/ws-denied", denied),
        WebSocketRoute("/ws-whoami", websocket_whoami),
        WebSocketRoute("/ws-patient", patient),
        WebSocketRoute("/ws-crash", crashes),
        WebSocketRoute("/ws-unauthorized", unauthorized),
    ],
    middleware=[Middleware(AddHeader)],
    lifespan=lifespan,
)
