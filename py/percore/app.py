"""``percore.App`` and ``percore.Router``: handlers registered by method and path, served by the Rust
router. Each handler's signature is analysed once, at registration (see ``percore.params``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import params as _params
from ._logging import logger
from .exceptions import ConfigurationError, HTTPException
from .responses import JSONResponse, Response

Handler = TypeVar("Handler", bound=Callable[..., Any])

_PATH_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    function: Callable[..., Any]
    params: list[_params.Param]
    status_code: int


class Router:
    """A group of routes under a common ``prefix``; ``App.include_router`` adds them to an app."""

    def __init__(self, prefix: str = "") -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ConfigurationError(f"router prefix {prefix!r} must start with '/' and not end with '/'")
        self.prefix = prefix
        self._routes: list[Route] = []

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
    ) -> None:
        full_path = self.prefix + path
        if not full_path.startswith("/"):
            raise ConfigurationError(f"route {path!r}: path must start with '/'")
        names = _PATH_PARAM.findall(full_path)
        for method in methods:
            method = method.upper()
            self._routes.append(
                Route(
                    method,
                    full_path,
                    function,
                    _params.analyse(method, full_path, function, names),
                    status_code,
                )
            )

    def route(
        self, path: str, methods: Iterable[str] = ("GET",), *, status_code: int = 200
    ) -> Callable[[Handler], Handler]:
        methods = list(methods)

        def register(function: Handler) -> Handler:
            self.add_route(path, function, methods, status_code=status_code)
            return function

        return register

    def get(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["GET"], status_code=status_code)

    def post(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["POST"], status_code=status_code)

    def put(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["PUT"], status_code=status_code)

    def patch(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["PATCH"], status_code=status_code)

    def delete(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["DELETE"], status_code=status_code)

    def head(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["HEAD"], status_code=status_code)

    def options(self, path: str, *, status_code: int = 200) -> Callable[[Handler], Handler]:
        return self.route(path, ["OPTIONS"], status_code=status_code)

    def include_router(self, router: Router) -> None:
        """Adds ``router``'s routes under this router's prefix (their signatures re-analysed for the new path)."""
        for route in router.routes:
            self.add_route(route.path, route.function, [route.method], status_code=route.status_code)


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
    """A percore application: ``api = App()``, then ``@api.get("/path")`` on handlers."""

    def __init__(self) -> None:
        super().__init__()
        self._exception_handlers: dict[type[BaseException], Callable[[Any, BaseException], Any]] = {
            HTTPException: _http_exception_response,
        }
        self._loop_start: list[LoopHook] = []
        self._loop_stop: list[LoopHook] = []

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

    def _exception_response(self, error: BaseException) -> Response | None:
        """The response a registered handler makes of ``error``, or None (then: 500 and a log)."""
        for kind in type(error).__mro__:
            handler = self._exception_handlers.get(kind)
            if handler is not None:
                return handler(None, error)
        return None


def _http_exception_response(request: Any, error: BaseException) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
