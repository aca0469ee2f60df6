"""``percore.App``: a ``Router`` (``percore.routing``) with the app-wide parts: exception handlers,
CORS, loop hooks, the OpenAPI and docs routes, and ``serving_routes()``, the routes the server registers
(wrapped in middleware by ``percore._middleware`` where needed, const values computed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._cors import Cors
from ._logging import logger
from ._middleware import HANDLER_RAISED, Middleware, call_exception_handler, with_middleware
from ._websocket_route import WEBSOCKET
from .exceptions import HTTPException
from .params import Depends
from .responses import JSONResponse, Response, as_response
from .routing import Handler, Route, RouteOptions, Router
from .staticfiles import static_routes

__all__ = ["App", "Handler", "LoopHook", "Middleware", "Route", "RouteOptions", "Router"]

LoopHook = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass
class _LoopLifecycle:
    """Runs an app's loop hooks on one loop (created on that loop's thread)."""

    start_hooks: list[LoopHook]
    stop_hooks: list[LoopHook]
    state: dict[str, Any] = field(default_factory=dict)

    async def startup(self) -> dict[str, Any]:
        for hook in self.start_hooks:
            result = hook(self.state)
            if inspect.isawaitable(result):
                await result
        return self.state

    async def shutdown(self) -> None:
        for hook in self.stop_hooks:
            try:
                result = hook(self.state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_loop_stop hook %r failed", hook)


class App(Router):
    """A percore application: ``api = App()``, then ``@api.get("/path")`` on handlers.

    ``openapi_url`` serves the OpenAPI 3.1 schema, ``docs_url`` Swagger UI (``percore[docs]``; else a
    built-in page) and ``redoc_url`` ReDoc (when installed), all offline (None: off; see ``_openapi``).
    """

    def __init__(
        self,
        *,
        title: str = "percore app",
        version: str = "0.1.0",
        openapi_url: str | None = "/openapi.json",
        docs_url: str | None = "/docs",
        dependencies: Sequence[Depends] = (),
        redoc_url: str | None = "/redoc",
    ) -> None:
        super().__init__(dependencies=dependencies)
        self.title = title
        self.version = version
        self.openapi_url = openapi_url
        self.docs_url = docs_url
        self.redoc_url = redoc_url
        self._exception_handlers: dict[type[BaseException], Callable[[Any, BaseException], Any]] = {
            HTTPException: _http_exception_response,
        }
        self._loop_start: list[LoopHook] = []
        self._loop_stop: list[LoopHook] = []
        self._cors: Cors | None = None

    def add_cors(
        self,
        allow_origins: Iterable[str] = ("*",),
        allow_methods: Iterable[str] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
        allow_headers: Iterable[str] = ("*",),
        allow_credentials: bool = False,
        max_age: int = 600,
    ) -> None:
        """Answers CORS preflights (OPTIONS) on every path and adds the CORS headers to responses."""
        self._cors = Cors(
            list(allow_origins),
            [m.upper() for m in allow_methods],
            list(allow_headers),
            allow_credentials,
            max_age,
        )

    def openapi(self) -> dict[str, Any]:
        from ._openapi import generate

        return generate(self.routes, self.title, self.version)

    def serving_routes(self) -> list[Route]:
        """The routes the server registers: the app's own (wrapped in middleware and CORS if any),
        the OpenAPI and docs routes, and CORS preflight routes."""
        routes = [
            r if r.endpoint is None else dataclasses.replace(r, function=r.endpoint, inline=_needs_loop(r))
            for r in self._routes
        ]
        extra = Router()
        # Rendered once; each request gets a fresh Response (middleware may add headers to it).
        if self.openapi_url:
            schema = JSONResponse(self.openapi()).body
            extra.add_route(
                self.openapi_url, lambda: Response(schema, media_type="application/json"), inline=True
            )
        if self.openapi_url:
            from ._openapi import docs_routes

            for path, media_type, body in docs_routes(
                self.title, self.openapi_url, self.docs_url, self.redoc_url
            ):
                extra.add_route(path, _static(body, media_type), inline=True)
        routes += extra.routes
        middleware = list(self._middleware)
        if self._cors is not None:
            middleware.insert(0, self._cors.middleware)
            have_options = {r.path for r in routes if r.method == "OPTIONS"}
            preflight = Router()
            for path in dict.fromkeys(r.path for r in routes):
                if path not in have_options:
                    preflight.add_route(path, _no_content, ["OPTIONS"], inline=True)
            routes += preflight.routes
        # A registered exception handler gets the request and may await: routes run in the same Python
        # wrapper as middleware then. Without one, HTTPException is answered from Rust at no cost.
        custom_handlers = self._exception_handlers != {HTTPException: _http_exception_response}
        wrapped = []
        for route in routes:
            layers = [*middleware, *route.middleware]
            if (layers or custom_handlers) and not route.const:
                route = with_middleware(route, layers, self._handle_exception)
            wrapped.append(route)
        routes = wrapped
        # WebSocket routes: no middleware or CORS (they wrap HTTP responses), not in OpenAPI.
        routes += [Route(WEBSOCKET, s.path, s.runner, s.params, 200) for s in self._websocket_routes]
        return [_computed(route) if route.const else route for route in routes] + static_routes(self._mounts)

    def exception_handler(self, exception_type: type[BaseException]) -> Callable[[Handler], Handler]:
        """``handler(request, exc)`` turns ``exception_type`` (and subclasses) into a response."""

        def register(function: Handler) -> Handler:
            self._exception_handlers[exception_type] = function
            return function

        return register

    def on_loop_start(self, function: Handler) -> Handler:
        """Runs on every loop, on that loop's thread, before it serves: ``hook(state)`` (sync or async).

        Create loop-bound resources here (database pools, HTTP clients) and put them in ``state``;
        handlers reach them as ``request.state`` — each loop has its own.
        """
        self._loop_start.append(function)
        return function

    def on_loop_stop(self, function: Handler) -> Handler:
        """Runs on every loop after it stopped serving: ``hook(state)``, to close what start created."""
        self._loop_stop.append(function)
        return function

    def _lifecycle(self) -> _LoopLifecycle | None:
        if not self._loop_start and not self._loop_stop:
            return None
        return _LoopLifecycle(list(self._loop_start), list(self._loop_stop))

    def _exception_handler(self, error: BaseException) -> Callable[[Any, BaseException], Any] | None:
        for kind in type(error).__mro__:
            handler = self._exception_handlers.get(kind)
            if handler is not None:
                return handler
        return None

    async def _handle_exception(self, request: Any, error: BaseException) -> Response | None:
        """The response the handler registered for ``error`` makes of it, or None (then: 500 and a log).

        As in Starlette/FastAPI (which handle at the route and again in ExceptionMiddleware), an exception
        a handler raises gets one more pass through the handlers, with the same request. One that no
        further pass handles propagates (through middleware) marked, and the route's wrapper makes it a
        logged 500: the Rust-side ``_exception_response`` must not handle it (again, without a request).
        """
        handler = self._exception_handler(error)
        if handler is None:
            return None
        try:
            try:
                return await call_exception_handler(handler, request, error)
            except Exception as again:
                handler = self._exception_handler(again)
                if handler is None:
                    raise
                return await call_exception_handler(handler, request, again)
        except Exception as failed:
            vars(failed)[HANDLER_RAISED] = True  # not setattr: a frozen dataclass exception refuses it
            raise

    def _exception_response(self, error: BaseException) -> Response | None:
        """For routes the Rust side runs without a Python wrapper, i.e. when only the built-in
        HTTPException handler is registered (``serving_routes`` wraps every route otherwise)."""
        handler = self._exception_handler(error)
        if handler is None:
            return None
        result = handler(None, error)
        return result if isinstance(result, Response) else as_response(result)


def _needs_loop(route: Route) -> bool:
    """Whether a route's dependency plan must run on its loop: a sync plan whose generators or background
    tasks finish after the response does so in a task of the running loop (``run_after_response``), which
    a sync pool thread does not have."""
    source = getattr(route.endpoint, "_percore_source", "")
    return route.inline or "_percore_after(" in source


def _computed(route: Route) -> Route:
    """A const route with its value computed (a coroutine is run to completion on a private loop)."""
    value = route.function()
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    return dataclasses.replace(route, const_value=(value,))


def _static(body: bytes, media_type: str) -> Callable[[], Response]:
    return lambda: Response(body, media_type=media_type)


def _no_content() -> Response:
    return Response(b"", status_code=204)


def _http_exception_response(request: Any, error: BaseException) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
