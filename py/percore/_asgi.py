"""ASGI support on the Python side: telling ASGI 3 apps apart, and the lifespan protocol per loop.

Requests themselves (scope, ``receive``, ``send``) are handled in Rust (``runtime/src/python/asgi.rs``).
Lifespan runs once **on every loop**, on that loop's thread, before it accepts connections; the state
the app puts in ``scope["state"]`` during startup is that loop's state, and each request on the loop
gets a shallow copy of it. So a resource created in lifespan (a DB pool, an HTTP client) belongs to the
loop whose requests use it, and is never shared across threads.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ._logging import logger
from .app import App
from .exceptions import AppLoadError, LifespanStartupFailed  # the latter was defined here: still importable

INTERFACES = ("auto", "native", "asgi")


def is_asgi3(app: Any) -> bool:
    """Whether ``app(scope, receive, send)`` is a coroutine function, as uvicorn decides it."""
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app) or inspect.ismethod(app):
        return inspect.iscoroutinefunction(app)
    call = getattr(app, "__call__", None)  # noqa: B004 - instances with an async __call__
    return inspect.iscoroutinefunction(call)


def choose_interface(app: Any, requested: str = "auto") -> str:
    """'native' or 'asgi' for ``app``; an object that is neither is an ``AppLoadError``."""
    if requested not in INTERFACES:
        raise AppLoadError(f"unknown interface {requested!r} (expected one of {', '.join(INTERFACES)})")
    if isinstance(app, App):
        if requested == "asgi":
            raise AppLoadError("a percore.App is served natively; drop --interface asgi")
        return "native"
    if requested == "native":
        raise AppLoadError(f"--interface native needs a percore.App, got a {type(app).__name__}")
    if not callable(app):
        raise AppLoadError(f"a {type(app).__name__} is neither a percore.App nor an ASGI application")
    if not is_asgi3(app):
        name = getattr(app, "__qualname__", type(app).__name__)
        if _takes_no_arguments(app):
            raise AppLoadError(f"{name} takes no arguments: if it returns the app, serve it with --factory")
        raise AppLoadError(
            f"{name} is not an ASGI 3 application "
            "(async def app(scope, receive, send)); ASGI 2 apps are not supported"
        )
    return "asgi"


def _takes_no_arguments(function: Any) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


class Lifespan:
    """The ASGI lifespan protocol for one loop; created and run on that loop's thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self._unsupported = False
        self._task: asyncio.Task | None = None

    async def startup(self) -> dict[str, Any]:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._messages.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise LifespanStartupFailed(self._failure)
        return self.state

    async def shutdown(self) -> None:
        if self._unsupported or self._task is None or self._task.done():
            return
        await self._messages.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            logger.error("ASGI lifespan shutdown failed: %s", self._failure)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as error:
            if not self._startup_done.is_set():
                # As uvicorn's default: an app that rejects the lifespan scope simply does not use it.
                self._unsupported = True
                logger.info(
                    "ASGI 'lifespan' protocol appears unsupported (%s: %s)", type(error).__name__, error
                )
            else:
                logger.error("Exception in ASGI lifespan", exc_info=(type(error), error, error.__traceback__))
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> dict[str, Any]:
        return await self._messages.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failure = message.get("message") or "the app's lifespan startup failed"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = message.get("message") or "the app's lifespan shutdown failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message {kind!r}")
