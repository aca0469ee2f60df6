"""Threads started from a loop thread run on every CPU the process may use, not on the loop's one core.

A new thread inherits the CPU affinity of the thread that starts it, and percore pins each loop thread to
one core. So every thread a handler or a library starts on a loop — anyio's worker threads (Starlette's
``run_in_threadpool``, FastAPI's ``def`` endpoints and dependencies), a ``ThreadPoolExecutor`` (percore's
shared pool, ``_threadpool``), the app's own threads — would be pinned to that loop's core: work handed to
it competes with the loop it was meant to leave free, while the other cores idle (on 3.13t too, where those
threads could run in parallel).

So ``threading.Thread.start`` on a loop thread widens the loop thread's affinity to the process's mask for
the moment of the start (the new thread inherits that), then pins the loop back. Installed when percore is
imported; two ``sched_setaffinity`` calls per thread started from a loop thread (thread pools reuse their
threads, so this is rare). Threads started elsewhere are untouched.
"""

from __future__ import annotations

import os
import threading

_original_start = threading.Thread.start
_this_thread = threading.local()


def process_mask() -> set[int]:
    """The process's CPU affinity: its main thread's (``pid``), not the calling loop thread's single core."""
    return os.sched_getaffinity(os.getpid())


def mark_loop_thread() -> None:
    """Called on a loop thread once it is pinned: threads it starts from now on get the process's mask."""
    _this_thread.is_loop = True


def _start(self: threading.Thread) -> None:
    if not getattr(_this_thread, "is_loop", False):
        return _original_start(self)
    pinned = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, process_mask())
    except OSError:  # a mask changed under us (cpuset update): start it pinned rather than not at all
        return _original_start(self)
    try:
        return _original_start(self)
    finally:
        os.sched_setaffinity(0, pinned)


_start.__doc__ = _original_start.__doc__
_start.__percore__ = True  # type: ignore[attr-defined]


def install() -> None:
    if not getattr(threading.Thread.start, "__percore__", False):
        threading.Thread.start = _start  # type: ignore[method-assign]
