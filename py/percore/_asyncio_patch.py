"""Make ``asyncio.current_task()`` see the request task percore is stepping.

percore runs a request's coroutine without an ``asyncio.Task`` (see ``runtime/src/python/task.rs``):
on 3.13t, asyncio records the current task in one process-wide dict, and writing it twice per request
from every loop is shared mutable state that kills scaling (measured: two threads slower than one).
So the request task is recorded per thread, in Rust, and
``current_task`` is wrapped to consult it when asyncio knows of no task. Real asyncio Tasks created by
handlers are unaffected. Installed when ``percore`` is imported, before the app (and libraries such as
anyio that bind ``current_task`` at import) is loaded.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks

from . import _runtime

_original_current_task = asyncio.tasks.current_task


def current_task(loop: asyncio.AbstractEventLoop | None = None):
    task = _original_current_task(loop)
    if task is None:
        task = _runtime.current_request_task(loop)
    return task


current_task.__doc__ = _original_current_task.__doc__
current_task.__percore__ = True  # type: ignore[attr-defined]


def install() -> None:
    if getattr(asyncio.tasks.current_task, "__percore__", False):
        return
    asyncio.tasks.current_task = current_task
    asyncio.current_task = current_task
