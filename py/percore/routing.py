"""``percore.Router`` and ``Route``: handlers registered by method and path (the Rust router serves
them). Each handler's signature is analysed once, at registration (see ``percore.params`` and
``percore.dependencies``); ``percore.App`` is a ``Router`` with the app-wide parts (``percore.app``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from . import params as _params
from ._websocket_route import WebSocketRoute, websocket_route
from .dependencies import solve
from .exceptions import ConfigurationError
from .params import Depends
from .staticfiles import mount_path

Handler = TypeVar("Handler", bound=Callable[..., Any])

_PATH_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    """One method and path and what serves it: the server registers these (``App.serving_routes``)."""

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
        #: ``(path, StaticFiles)`` mounts (``mount``), served from Rust; not routes of the OpenAPI schema.
        self._mounts: list[tuple[str, Any]] = []
        self._websocket_routes: list[WebSocketRoute] = []

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
            if any(p.source == "websocket" for p in solved.params):
                raise ConfigurationError(
                    f"route {method} {full_path}: a WebSocket parameter needs @websocket({path!r})"
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

    def add_websocket_route(
        self, path: str, function: Callable[..., Any], *, dependencies: Sequence[Depends] = ()
    ) -> None:
        """A WebSocket route: ``function`` (``async def``) gets the connection as its ``WebSocket``
        parameter, and path/query/header/cookie parameters and dependencies as an HTTP route's."""
        full_path = self.prefix + path
        if not full_path.startswith("/"):
            raise ConfigurationError(f"route {path!r}: path must start with '/'")
        dependencies = (*self._dependencies, *dependencies)
        names = _PATH_PARAM.findall(full_path)
        self._websocket_routes.append(websocket_route(full_path, function, names, dependencies))

    def websocket(self, path: str, *, dependencies: Sequence[Depends] = ()) -> Callable[[Handler], Handler]:
        """``@api.websocket("/ws")`` on ``async def handler(websocket: WebSocket, ...)``."""

        def register(function: Handler) -> Handler:
            self.add_websocket_route(path, function, dependencies=dependencies)
            return function

        return register

    def middleware(self, function: Any) -> Any:
        """``async def mw(request, call_next)`` around this router's handlers: ``await call_next(request)``
        gives the handler's response (always a ``Response`` object here); return it or another. The
        first registered is the outermost; an app's middleware wraps its routers'."""
        self._middleware.append(function)
        return function

    def mount(self, path: str, app: Any, name: str | None = None) -> None:
        """Serves ``app``, a ``percore.StaticFiles``, at ``path`` and below (Starlette's ``mount``), from
        Rust: see ``percore.staticfiles``. ``name`` is accepted for Starlette compatibility."""
        self._mounts.append((mount_path(self.prefix + path, app), app))

    def include_router(self, router: Router, *, dependencies: Sequence[Depends] = ()) -> None:
        """Adds ``router``'s routes under this router's prefix (their signatures re-analysed for the new
        path), with the router's middleware; ``dependencies`` run before those routes' own (after this
        router's). Its mounts are mounted under this router's prefix."""
        self._mounts += [(self.prefix + path, files) for path, files in router._mounts]
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
        for socket in router._websocket_routes:
            self.add_websocket_route(
                socket.path, socket.function, dependencies=(*dependencies, *socket.dependencies)
            )
