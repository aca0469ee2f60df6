"""``BackgroundTasks``: work a handler (or a dependency) queues to run after its response is sent.

    @api.post("/signup")
    async def signup(user: User, tasks: percore.BackgroundTasks):
        tasks.add_task(send_welcome_mail, user.email)
        return {"ok": True}

The tasks run in order on the request's loop once the response has been handed to the connection (see
``percore.dependencies``: they run in the task that also closes ``yield`` dependencies, after the
response left); sync tasks run on the loop thread, so keep them short. A task that raises is logged on
the ``percore`` logger and the next one still runs; the response is never affected.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._logging import logger


class BackgroundTask:
    """One call, ``func(*args, **kwargs)`` (sync or async), run after the response (``Response(background=)``)."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs

    async def __call__(self) -> None:
        try:
            result = self.func(*self.args, **self.kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("background task %s failed", getattr(self.func, "__qualname__", self.func))


class BackgroundTasks(BackgroundTask):
    """Declare a parameter of this type to get the request's task list (one per request, shared by the
    handler and its dependencies); ``add_task(func, *args, **kwargs)`` queues a call."""

    def __init__(self, tasks: list[BackgroundTask] | None = None) -> None:
        self.tasks: list[BackgroundTask] = list(tasks or [])

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.tasks.append(BackgroundTask(func, *args, **kwargs))

    async def __call__(self) -> None:
        for task in self.tasks:
            await task()


#: Tasks in flight (asyncio keeps only weak references to tasks).
_running: set[asyncio.Task[None]] = set()


def run_after_response(work: Callable[[], Awaitable[None]]) -> None:
    """Starts ``work()`` as a task of the running loop: its first step runs on the loop's next
    iteration, after the response that queued it was handed to the connection."""
    task = asyncio.get_running_loop().create_task(work())
    _running.add(task)
    task.add_done_callback(_running.discard)


__all__ = ["BackgroundTask", "BackgroundTasks", "run_after_response"]
