"""The event loop each percore loop thread owns: percore's own (``--loop percore``, the default) or asyncio's.

percore's Rust side drives this loop from the thread's tokio runtime (runtime/src/python/driver.rs): it
waits on the loop's epoll fd (and the next timer) itself, then runs one iteration that never blocks. The
loop must look "running" to handlers (``get_running_loop()``, ``is_running()``) for as long as the thread
serves, exactly as if ``run_forever()`` were on the stack.

- ``PercoreLoopThreadEventLoop``: ``percore.EventLoop`` (reactor in Rust, docs/event-loop.md); the driver
  talks to its reactor directly (``park``, ``run_once(block=False)``).
- ``LoopThreadEventLoop``: asyncio's selector loop with a selector that never blocks; the driver calls
  ``_percore_timeout()`` and ``_run_once()``.

Every loop's default executor (``asyncio.to_thread``, ``run_in_executor(None, ...)``) is the process's one
shared thread pool (``_threadpool``), not a pool per loop; closing a loop leaves that pool running.
"""

from __future__ import annotations

import asyncio
import selectors
import sys
import threading
from asyncio import base_events, events

from . import _affinity, _threadpool
from ._event_loop import EventLoop

LOOPS = ("percore", "asyncio")  # --loop choices; the first is the default

_DefaultSelector = getattr(selectors, "EpollSelector", selectors.DefaultSelector)


class _NonBlockingSelector(_DefaultSelector):
    """A selector whose ``select`` only collects events that are already there; tokio does the waiting."""

    def select(self, timeout: float | None = None):
        return super().select(0)


class _LoopThread:
    """What a loop thread's loop adds to its event loop class: entering and leaving the "running" state
    without ``run_forever``, and the loop's root task."""

    _percore_old_agen_hooks = None
    _percore_pool = None

    def _percore_enter(self) -> None:
        """Make this the running loop of the current thread (what ``run_forever`` does before looping)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._percore_old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook
        )
        events._set_running_loop(self)
        # The loop's life as a task, shaped like the task ``run_until_complete`` runs: libraries look for
        # that task as the loop's "root" (anyio ties its worker threads to it). Without one they would
        # fall back to the request's task and start and stop a worker thread for every request.
        self._percore_life = self.create_task(self._percore_serve(), name="percore loop")
        self._percore_life.add_done_callback(base_events._run_until_complete_cb)

    async def _percore_serve(self) -> None:
        await self.create_future()  # until the loop closes (then cancelled like every task)

    def _percore_has_ready(self) -> bool:
        raise NotImplementedError

    def _percore_step(self) -> None:
        """One iteration that never blocks."""
        raise NotImplementedError

    def _percore_close(self) -> None:
        """Cancel what is left, let it unwind, and close the loop on its own thread."""
        try:
            tasks = [task for task in asyncio.all_tasks(self) if not task.done()]
            for task in tasks:
                task.cancel()
            for _ in range(10):
                if not self._percore_has_ready() and not any(not task.done() for task in tasks):
                    break
                self._percore_step()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            if self._percore_old_agen_hooks is not None:
                sys.set_asyncgen_hooks(*self._percore_old_agen_hooks)
                self._percore_old_agen_hooks = None
            asyncio.set_event_loop(None)
            # close() shuts the default executor down: detach the shared pool, which other loops still use
            # (the last server to stop shuts it down, see _threadpool).
            if self._default_executor is self._percore_pool:
                self._default_executor = None
            self.close()


class LoopThreadEventLoop(_LoopThread, asyncio.SelectorEventLoop):
    """asyncio's selector event loop (``--loop asyncio``), stepped by percore's Rust driver."""

    def __init__(self) -> None:
        super().__init__(_NonBlockingSelector())

    def _percore_timeout(self) -> float | None:
        """Seconds until this loop must run again: 0 if callbacks are ready, None if only I/O can wake it."""
        # There is no run_forever to break out of: a stop() request only means "run once more".
        self._stopping = False
        if self._ready:
            return 0.0
        if not self._scheduled:
            return None
        return max(0.0, self._scheduled[0]._when - self.time())

    def _percore_has_ready(self) -> bool:
        return bool(self._ready)

    def _percore_step(self) -> None:
        self._run_once()  # the selector never blocks


class PercoreLoopThreadEventLoop(_LoopThread, EventLoop):
    """percore's own event loop (``--loop percore``), stepped by the Rust driver through its reactor."""

    def _percore_has_ready(self) -> bool:
        return self._reactor.counts()[0] > 0

    def _percore_step(self) -> None:
        self._reactor.run_once(block=False)


def new_running_loop(kind: str = LOOPS[0]) -> _LoopThread:
    """Create the calling thread's loop (``kind``: one of ``LOOPS``) and make it that thread's running (and
    current) loop. Called on the loop thread once it is pinned to its core: threads started from it get the
    process's CPUs (``_affinity``)."""
    if kind not in LOOPS:
        raise ValueError(f"unknown event loop {kind!r}: expected one of {', '.join(LOOPS)}")
    _affinity.mark_loop_thread()
    loop: _LoopThread = PercoreLoopThreadEventLoop() if kind == "percore" else LoopThreadEventLoop()
    loop._percore_pool = _threadpool.shared()
    loop.set_default_executor(loop._percore_pool)
    asyncio.set_event_loop(loop)
    loop._percore_enter()
    return loop
