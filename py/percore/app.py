"""``percore.App``: register handlers by method and path; the routes are served by the Rust router.

Each handler's signature is analysed once, when it is registered: path parameters (``/users/{id}``)
are passed as keyword arguments (strings), and a parameter named ``request`` or annotated ``Request``
receives the request. Anything else must have a default. Handlers may be ``def`` or ``async def``;
both run on the loop thread that the routing policy picks.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .exceptions import ConfigurationError
from .requests import Request

Handler = TypeVar("Handler", bound=Callable[..., Any])

_PATH_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    function: Callable[..., Any]
    path_params: list[str]
    request_param: str | None
    status_code: int


def _names_request(annotation: Any) -> bool:
    return isinstance(annotation, str) and annotation.split(".")[-1] == "Request"


def _analyse(method: str, path: str, function: Callable[..., Any], status_code: int) -> Route:
    where = f"{method} {path} ({getattr(function, '__qualname__', function)!r})"
    if not path.startswith("/"):
        raise ConfigurationError(f"route {where}: path must start with '/'")
    in_path = _PATH_PARAM.findall(path)
    try:
        try:
            signature = inspect.signature(function, eval_str=True)
        except NameError:  # an annotation names something not importable here: read them as text
            signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"route {where}: cannot read the handler's signature: {error}") from None
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    path_params = [name for name in in_path if name in signature.parameters or takes_any_keyword]
    request_param = None
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in in_path:
            if parameter.kind is parameter.POSITIONAL_ONLY:
                raise ConfigurationError(f"route {where}: path parameter {name!r} cannot be positional-only")
            continue
        if name == "request" or parameter.annotation is Request or _names_request(parameter.annotation):
            request_param = name
            continue
        if parameter.default is parameter.empty:
            raise ConfigurationError(
                f"route {where}: parameter {name!r} is neither a path parameter of {path!r}, "
                "nor the request, and has no default"
            )
    return Route(method, path, function, path_params, request_param, status_code)


class App:
    """A percore application: ``api = App()``, then ``@api.get("/path")`` on handlers."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def route(
        self, path: str, methods: Iterable[str] = ("GET",), *, status_code: int = 200
    ) -> Callable[[Handler], Handler]:
        methods = [m.upper() for m in methods]

        def register(function: Handler) -> Handler:
            for method in methods:
                self._routes.append(_analyse(method, path, function, status_code))
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
