"""Native WebSocket routes (``@api.websocket``) for tests/test_websockets.py.

- ``/ws``: accepts and echoes text (``iter_text``) until the client leaves.
- ``/ws-bytes``: echoes binary messages; ``/ws-json``: echoes JSON with ``"echo": True`` added.
- ``/chat``: accepts with the first offered subprotocol it knows (``chat.v2``, ``chat.v1``) and an
  ``x-chat`` header, then sends the subprotocol it chose.
- ``/rooms/{room}``: path, query, header and cookie parameters, answered as JSON (with what the
  ``WebSocket`` object says: path/query params, URL path, client, loop state).
- ``/private``: a ``current_user`` dependency (``x-token: secret``, else HTTPException 401) and a
  ``yield`` dependency whose cleanup is logged after the connection ends.
- ``/disconnect``: receives until ``WebSocketDisconnect``, logs ``disconnect CODE``.
- ``/boom``: accepts, receives one message, raises (the client gets 1011).
- ``/deny``: closes before accepting (403); ``/policy``: raises ``WebSocketException(4001)`` after
  accepting.
- ``/r/ws``: a router's WebSocket route, included under ``/r`` with a router-level dependency.
- ``/both``: a plain GET and a WebSocket on the same path.
- ``GET /log``: the log; ``GET /plaintext``: 200.
"""

from __future__ import annotations

from typing import Annotated

import percore
from percore import Cookie, Depends, Header, HTTPException, WebSocket, WebSocketDisconnect, WebSocketException

api = percore.App()
LOG: list[str] = []


@api.on_loop_start
def greet(state):
    state["greeting"] = "hello from the loop"


@api.get("/log")
def log():
    return {"log": LOG}


@api.get("/plaintext")
def plaintext():
    return "ok"


@api.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


@api.websocket("/ws-bytes")
async def echo_bytes(websocket: WebSocket):
    await websocket.accept()
    async for data in websocket.iter_bytes():
        await websocket.send_bytes(data)


@api.websocket("/ws-json")
async def echo_json(websocket: WebSocket):
    await websocket.accept()
    async for data in websocket.iter_json():
        await websocket.send_json({**data, "echo": True})


@api.websocket("/chat")
async def chat(websocket: WebSocket):
    chosen = next((p for p in websocket.subprotocols if p in ("chat.v2", "chat.v1")), None)
    await websocket.accept(subprotocol=chosen, headers=[(b"x-chat", b"1")])
    await websocket.send_text(f"speaking {chosen}")
    await websocket.close()


@api.websocket("/rooms/{room}")
async def room(
    websocket: WebSocket,
    room: str,
    x_user: Annotated[str, Header()],
    limit: int = 10,
    session: Annotated[str | None, Cookie()] = None,
):
    await websocket.accept()
    await websocket.send_json(
        {
            "room": room,
            "limit": limit,
            "user": x_user,
            "session": session,
            "path_params": websocket.path_params,
            "query_params": websocket.query_params,
            "path": websocket.url.path,
            "scheme": websocket.url.scheme,
            "client": websocket.client.host if websocket.client else None,
            "state": websocket.state.get("greeting"),
        }
    )
    await websocket.close()


def current_user(x_token: Annotated[str | None, Header()] = None) -> str:
    if x_token != "secret":
        raise HTTPException(401, "bad token", {"WWW-Authenticate": "Bearer"})
    return "alice"


async def session_scope(websocket: WebSocket):
    LOG.append(f"session opened for {websocket.url.path}")
    yield "session"
    LOG.append("session closed")


@api.websocket("/private")
async def private(
    websocket: WebSocket,
    user: Annotated[str, Depends(current_user)],
    session: Annotated[str, Depends(session_scope)],
):
    await websocket.accept()
    await websocket.send_text(f"{user} {session}")
    await websocket.receive_text()


@api.websocket("/disconnect")
async def disconnect(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect as gone:
        LOG.append(f"disconnect {gone.code}")
        raise


@api.websocket("/cleanup")
async def cleanup(websocket: WebSocket, then: str):
    """Iterates until the connection ends, then closes (or sends) in cleanup code, as apps do: after the
    server closed the connection (1009 here) a close must be a no-op and a send raise WebSocketDisconnect,
    neither an error."""
    await websocket.accept()
    try:
        async for _ in websocket.iter_text():
            pass
    finally:
        if then == "close":
            await websocket.close()
        else:
            try:
                await websocket.send_text("too late")
            except WebSocketDisconnect as gone:
                LOG.append(f"cleanup send: disconnect {gone.code}")
        LOG.append(f"cleanup {then} done")


@api.websocket("/boom")
async def boom(websocket: WebSocket):
    await websocket.accept()
    await websocket.receive_text()
    raise RuntimeError("boom")


@api.websocket("/deny")
async def deny(websocket: WebSocket):
    await websocket.close()


@api.websocket("/policy")
async def policy(websocket: WebSocket):
    await websocket.accept()
    raise WebSocketException(4001, "not allowed")


def audit(websocket: WebSocket):
    LOG.append(f"audit {websocket.url.path}")


router = percore.Router(dependencies=[Depends(audit)])


@router.websocket("/ws")
async def routed(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text("routed")
    await websocket.close()


outer = percore.Router(prefix="/r")
outer.include_router(router)
api.include_router(outer)


@api.get("/both")
def both_http():
    return "http"


@api.websocket("/both")
async def both_websocket(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text("websocket")
    await websocket.close()
