"""Route middleware and exception handlers: a route's handler wrapped in ``async def mw(request,
call_next)`` layers (``Router.middleware``, CORS) and the app's ``exception_handler``s, in one Python
endpoint the server calls instead of the handler (``App.serving_routes``). Routes without either are not
wrapped: the Rust side calls their handler directly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from . import params as _params
from ._logging import log_handler_error
from .responses import PlainTextResponse, Response, as_response
from .routing import Route

Middleware = Callable[[Any, Callable[[Any], Awaitable[Response]]], Awaitable[Response]]

#: Marks (in its ``__dict__``) an exception an exception handler raised that no handler handled.
HANDLER_RAISED = "_percore_raised_by_exception_handler"


async def call_exception_handler(
    handler: Callable[[Any, BaseException], Any], request: Any, error: BaseException
) -> Response:
    result = handler(request, error)
    if inspect.isawaitable(result):
        result = await result
    return result if isinstance(result, Response) else as_response(result)


_REQUEST_PARAM = "_percore_request"


def _bind_call_next(layer: Middleware, call_next: Callable[[Any], Awaitable[Response]]):
    async def call(request: Any) -> Response:
        return await layer(request, call_next)

    return call


def with_middleware(
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
            if not vars(error).pop(HANDLER_RAISED, False):
                # Not from a handler that raised: raised by middleware, or one no handler matched (the
                # route handler's own were offered inside the chain). Offered to the handlers here, with
                # the request, outside the chain; unmatched, it goes on to the Rust side's 500.
                try:
                    handled = await handle_exception(request, error) if handle_exception else None
                except Exception as again:
                    if not vars(again).pop(HANDLER_RAISED, False):
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
