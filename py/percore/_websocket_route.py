"""Native WebSocket routes (``@api.websocket(path)``), compiled once at registration.

The handler's signature and its dependencies are resolved like an HTTP route's (``percore.dependencies``):
path, query, header and cookie parameters are bound per handshake in Rust, the dependency plan is one
generated function, and the ``WebSocket`` parameter (anywhere in the graph; one object per connection)
is filled in here. The server files the route under the pseudo-method ``WEBSOCKET`` in its router, so a
handshake (``GET`` with ``Upgrade: websocket``) on the path reaches it and a plain ``GET`` does not; it
then drives the same exchange as an ASGI app's WebSocket (``runtime/src/python/websocket.rs``), calling
``runner(scope, receive, send, kwargs)``.

A handshake whose parameters do not validate is refused with 403 and FastAPI's 422 ``detail`` as JSON
(FastAPI closes with 1008 before accepting, which uvicorn answers 403). An ``HTTPException`` before
``accept()`` (a dependency's) answers the handshake with its status and ``{"detail": ...}``, through the
ASGI WebSocket denial-response extension, as FastAPI under uvicorn does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .dependencies import solve
from .exceptions import ConfigurationError, HTTPException
from .params import Depends, Param
from .responses import JSONResponse
from .websockets import WebSocket, WebSocketDisconnect, WebSocketException, WebSocketState

#: The router's pseudo-method for WebSocket routes (``runtime/src/router.rs``).
WEBSOCKET = "WEBSOCKET"


@dataclass(frozen=True)
class WebSocketRoute:
    path: str
    function: Callable[..., Any]
    #: Of the route and the routers/app it was registered through (outermost first).
    dependencies: tuple[Depends, ...]
    #: Bound by the Rust side per handshake.
    params: list[Param]
    #: ``runner(scope, receive, send, kwargs)``: what the server calls per connection.
    runner: Callable[..., Any]


def websocket_route(
    path: str, function: Callable[..., Any], path_params: list[str], dependencies: Sequence[Depends]
) -> WebSocketRoute:
    where = f"WebSocket route {path} ({getattr(function, '__qualname__', function)!r})"
    if not inspect.iscoroutinefunction(function):
        raise ConfigurationError(f"{where}: the handler must be an `async def`")
    dependencies = tuple(dependencies)
    solved = solve(WEBSOCKET, path, function, path_params, dependencies)
    for param in solved.params:
        if param.source == "body":
            raise ConfigurationError(
                f"{where}: parameter {param.name!r} would be a request body, and a WebSocket handshake has "
                "none: read messages with `await websocket.receive_json()`"
            )
    slots = [p.name for p in solved.params if p.source == "websocket"]
    params = [p for p in solved.params if p.source != "websocket"]
    return WebSocketRoute(path, function, dependencies, params, _runner(solved.endpoint, slots))


def _runner(endpoint: Callable[..., Any], slots: list[str]) -> Callable[..., Any]:
    async def run(scope: dict[str, Any], receive: Any, send: Any, kwargs: dict[str, Any]) -> None:
        websocket = WebSocket(scope, receive, send)
        for slot in slots:
            kwargs[slot] = websocket
        try:
            await endpoint(**kwargs)
        except WebSocketDisconnect:
            pass  # the client left while the handler was receiving or sending: a normal end
        except WebSocketException as error:
            await _close(websocket, error.code, error.reason)
        except HTTPException as error:
            # A dependency's "no": before the handshake is answered, the handshake's answer (a denial
            # response, as FastAPI's under uvicorn); afterwards an error like any other (logged, 1011).
            if websocket.application_state is not WebSocketState.CONNECTING:
                raise
            await _deny(send, error)

    return run


async def _deny(send: Any, error: HTTPException) -> None:
    body = JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
    headers = [(b"content-type", b"application/json")]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in body.headers]
    await send({"type": "websocket.http.response.start", "status": body.status_code, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body.body})


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state is not WebSocketState.DISCONNECTED:
        try:
            await websocket.close(code, reason)
        except WebSocketDisconnect:
            pass
