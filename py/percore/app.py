"""``percore.App`` and ``percore.Router``: handlers registered by method and path, served by the Rust
router. Each handler's signature is analysed once, at registration (see ``percore.params``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar, Unpack

from . import params as _params
from ._logging import log_handler_error, logger
from .dependencies import solve
from .exceptions import ConfigurationError, HTTPException
from .params import Depends
from .responses import JSONResponse, PlainTextResponse, Response, as_response

Handler = TypeVar("Handler", bound=Callable[..., Any])

_PATH_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    function: Callable[..., Any]
    params: list[_params.Param]
    status_code: int
    const: bool = False
    #: For ``const`` routes when served: ``(value,)``, the handler's result computed once at startup.
    const_value: tuple[Any] | None = None
    #: Middleware of the routers this route was included through (innermost last).
    middleware: tuple[Any, ...] = ()
    #: ``dependencies=[...]`` of the route and of the routers/app it was registered through (outermost
    #: first), run before the handler's own dependencies; their values are discarded.
    dependencies: tuple[Depends, ...] = ()
    response_model: Any = None
    response_model_exclude_none: bool = False
    #: What the server calls when it is not ``function``: the dependency plan (``percore.dependencies``).
    endpoint: Callable[..., Any] | None = None
    #: Security schemes used by the route's dependencies (OpenAPI ``security``).
    security: tuple[Any, ...] = ()
    #: A ``def`` handler runs on the loop thread instead of the sync pool (``inline=True``).
    inline: bool = False


class RouteOptions(TypedDict, total=False):
    """The keyword options of ``route``/``get``/``post``/...: see ``Router.add_route``."""

    status_code: int
    const: bool
    dependencies: Sequence[Depends]
    response_model: Any
    response_model_exclude_none: bool
    inline: bool


class Router:
    """A group of routes under a common ``prefix``; ``App.include_router`` adds them to an app.

    ``dependencies=[Depends(f), ...]`` run before every route of this router (values discarded)."""

    def __init__(self, prefix: str = "", *, dependencies: Sequence[Depends] = ()) -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ConfigurationError(f"router prefix {prefix!r} must start with '/' and not end with '/'")
        self.prefix = prefix
        self._routes: list[Route] = []
        self._middleware: list[Any] = []
        self._dependencies: tuple[Depends, ...] = tuple(dependencies)

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def add_route(
        self,
        path: str,
        function: Callable[..., Any],
        methods: Iterable[str] = ("GET",),
        *,
        status_code: int = 200,
        const: bool = False,
        middleware: tuple[Any, ...] = (),
        dependencies: Sequence[Depends] = (),
        response_model: Any = None,
        response_model_exclude_none: bool = False,
        inline: bool = False,
    ) -> None:
        """``dependencies``: run before the handler, values discarded. ``response_model``: a pydantic
        model, dataclass or type the return value is validated and filtered through (FastAPI's);
        ``response_model_exclude_none`` drops None fields. ``inline``: a ``def`` handler runs on the loop
        thread instead of the sync pool (see ``route``)."""
        full_path = self.prefix + path
        if not full_path.startswith("/"):
            raise ConfigurationError(f"route {path!r}: path must start with '/'")
        names = _PATH_PARAM.findall(full_path)
        dependencies = (*self._dependencies, *dependencies)
        for method in methods:
            method = method.upper()
            solved = solve(
                method,
                full_path,
                function,
                names,
                dependencies,
                response_model,
                response_model_exclude_none,
            )
            if const and (solved.params or solved.endpoint is not function):
                raise ConfigurationError(
                    f"const route {method} {full_path}: the handler must take no parameters or "
                    "dependencies (it runs once)"
                )
            self._routes.append(
                Route(
                    method,
                    full_path,
                    function,
                    solved.params,
                    status_code,
                    const,
                    middleware=middleware,
                    dependencies=dependencies,
                    response_model=response_model,
                    response_model_exclude_none=response_model_exclude_none,
                    endpoint=None if solved.endpoint is function else solved.endpoint,
                    security=solved.security,
                    inline=inline,
                )
            )

    def route(
        self, path: str, methods: Iterable[str] = ("GET",), **options: Unpack[RouteOptions]
    ) -> Callable[[Handler], Handler]:
        """``const=True``: the handler runs once at startup and its response is served from Rust on every
        request without entering Python (health checks, static JSON).

        A ``def`` handler runs on the sync pool's threads, so it may block or compute without holding up
        its loop; ``inline=True`` runs it on the loop thread instead, which saves the hand-off (two thread
        wake-ups, docs/benchmarks.md) for tiny handlers that never block. ``async def`` handlers run on the
        loop."""
        methods = list(methods)

        def register(function: Handler) -> Handler:
            self.add_route(path, function, methods, **options)
            return function

        return register

    def get(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["GET"], **options)

    def post(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["POST"], **options)

    def put(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["PUT"], **options)

    def patch(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["PATCH"], **options)

    def delete(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["DELETE"], **options)

    def head(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["HEAD"], **options)

    def options(self, path: str, **options: Unpack[RouteOptions]) -> Callable[[Handler], Handler]:
        return self.route(path, ["OPTIONS"], **options)

    def middleware(self, function: Any) -> Any:
        """``async def mw(request, call_next)`` around this router's handlers: ``await call_next(request)``
        gives the handler's response (always a ``Response`` object here); return it or another. The
        first registered is the outermost; an app's middleware wraps its routers'."""
        self._middleware.append(function)
        return function

    def include_router(self, router: Router, *, dependencies: Sequence[Depends] = ()) -> None:
        """Adds ``router``'s routes under this router's prefix (their signatures re-analysed for the new
        path), with the router's middleware; ``dependencies`` run before those routes' own (after this
        router's)."""
        for route in router.routes:
            self.add_route(
                route.path,
                route.function,
                [route.method],
                status_code=route.status_code,
                const=route.const,
                middleware=(*router._middleware, *route.middleware),
                dependencies=(*dependencies, *route.dependencies),
                response_model=route.response_model,
                response_model_exclude_none=route.response_model_exclude_none,
                inline=route.inline,
            )


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


Middleware = Callable[[Any, Callable[[Any], Awaitable[Response]]], Awaitable[Response]]


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
        self._cors: _Cors | None = None

    def add_cors(
        self,
        allow_origins: Iterable[str] = ("*",),
        allow_methods: Iterable[str] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
        allow_headers: Iterable[str] = ("*",),
        allow_credentials: bool = False,
        max_age: int = 600,
    ) -> None:
        """Answers CORS preflights (OPTIONS) on every path and adds the CORS headers to responses."""
        self._cors = _Cors(
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
                route = _with_middleware(route, layers, self._handle_exception)
            wrapped.append(route)
        routes = wrapped
        return [_computed(route) if route.const else route for route in routes]

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
                return await _call_exception_handler(handler, request, error)
            except Exception as again:
                handler = self._exception_handler(again)
                if handler is None:
                    raise
                return await _call_exception_handler(handler, request, again)
        except Exception as failed:
            vars(failed)[_HANDLER_RAISED] = True  # not setattr: a frozen dataclass exception refuses it
            raise

    def _exception_response(self, error: BaseException) -> Response | None:
        """For routes the Rust side runs without a Python wrapper, i.e. when only the built-in
        HTTPException handler is registered (``serving_routes`` wraps every route otherwise)."""
        handler = self._exception_handler(error)
        if handler is None:
            return None
        result = handler(None, error)
        return result if isinstance(result, Response) else as_response(result)


#: Marks (in its ``__dict__``) an exception an exception handler raised that no handler handled.
_HANDLER_RAISED = "_percore_raised_by_exception_handler"


async def _call_exception_handler(
    handler: Callable[[Any, BaseException], Any], request: Any, error: BaseException
) -> Response:
    result = handler(request, error)
    if inspect.isawaitable(result):
        result = await result
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


_REQUEST_PARAM = "_percore_request"


def _bind_call_next(layer: Middleware, call_next: Callable[[Any], Awaitable[Response]]):
    async def call(request: Any) -> Response:
        return await layer(request, call_next)

    return call


def _with_middleware(
    route: Route,
    middleware: list[Middleware],
    handle_exception: Callable[[Any, BaseException], Awaitable[Response | None]] | None = None,
) -> Route:
    """The route with its handler called through ``middleware`` (outermost first); an exception the
    handler raises becomes ``handle_exception(request, error)``'s response if it makes one."""
    handler = route.function
    status_code = route.status_code
    # As unwrapped: a ``def`` handler runs off the loop (here on asyncio's default executor, in a copy of
    # the request's Context), unless the route is ``inline``.
    off_loop = not route.inline and not inspect.iscoroutinefunction(handler)
    passes_request = any(p.source == "request" for p in route.params)
    name = f"{route.method} {route.path}"  # as the Rust side names the route in its logs

    async def endpoint(**kwargs: Any) -> Response:
        request = kwargs.pop(_REQUEST_PARAM)

        async def call_handler(_request: Any) -> Response:
            try:
                result = await asyncio.to_thread(handler, **kwargs) if off_loop else handler(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as error:
                # Handled exceptions become responses here, so middleware (CORS) sees them too.
                handled = await handle_exception(_request, error) if handle_exception else None
                if handled is None:
                    raise
                return handled
            return as_response(result, status_code)

        call = call_handler
        for layer in reversed(middleware):
            call = _bind_call_next(layer, call)
        try:
            return await call(request)
        except Exception as error:
            failure = error
            if not vars(error).pop(_HANDLER_RAISED, False):
                # Not from a handler that raised: raised by middleware, or one no handler matched (the
                # route handler's own were offered inside the chain). Offered to the handlers here, with
                # the request, outside the chain; unmatched, it goes on to the Rust side's 500.
                try:
                    handled = await handle_exception(request, error) if handle_exception else None
                except Exception as again:
                    if not vars(again).pop(_HANDLER_RAISED, False):
                        raise
                    failure = again
                else:
                    if handled is None:
                        raise
                    return handled
            # An exception handler raised: a 500 and a log, as the Rust side makes of an unhandled error.
            log_handler_error(name, failure)
            return PlainTextResponse("Internal Server Error", status_code=500)

    params = list(route.params)
    if not passes_request:
        params.append(_params.Param(_REQUEST_PARAM, "request", _REQUEST_PARAM, "str", False, None))
    else:
        # The handler's own request parameter serves as the middleware's too.
        own = next(p for p in params if p.source == "request")

        async def endpoint_sharing_request(**kwargs: Any) -> Response:
            kwargs[_REQUEST_PARAM] = kwargs[own.name]
            return await endpoint(**kwargs)

        return Route(route.method, route.path, endpoint_sharing_request, params, status_code)
    return Route(route.method, route.path, endpoint, params, status_code)


@dataclass(frozen=True)
class _Cors:
    origins: list[str]
    methods: list[str]
    headers: list[str]
    credentials: bool
    max_age: int

    def allowed_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if "*" in self.origins:
            return origin if self.credentials else "*"
        return origin if origin in self.origins else None

    async def middleware(self, request: Any, call_next: Callable[[Any], Awaitable[Response]]) -> Response:
        origin = request.headers.get("origin")
        allowed = self.allowed_origin(origin)
        preflight = request.method == "OPTIONS" and "access-control-request-method" in request.headers
        if preflight:
            if allowed is None:
                return PlainTextResponse("Disallowed CORS origin", status_code=400)
            requested = request.headers.get("access-control-request-headers", "")
            response = Response(b"", status_code=200)
            response.headers += [
                ("access-control-allow-origin", allowed),
                ("access-control-allow-methods", ", ".join(self.methods)),
                (
                    "access-control-allow-headers",
                    requested if "*" in self.headers else ", ".join(self.headers),
                ),
                ("access-control-max-age", str(self.max_age)),
                ("vary", "Origin"),
            ]
        else:
            response = await call_next(request)
            if allowed is not None:
                # A new list: the handler may return the same Response object to every request.
                response.headers = [
                    *response.headers,
                    ("access-control-allow-origin", allowed),
                    ("vary", "Origin"),
                ]
        if allowed is not None and self.credentials:
            response.headers = [*response.headers, ("access-control-allow-credentials", "true")]
        return response


def _http_exception_response(request: Any, error: BaseException) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
