"""percore's own asyncio event loop: asyncio's Unix selector loop with its reactor in Rust.

``EventLoop`` is ``asyncio.SelectorEventLoop`` (Unix) with the parts that run on every iteration moved
into ``_runtime.Reactor`` (``runtime/src/python/event_loop.rs``): the ready queue, the timer heap, the
reader/writer registrations on the reactor's own epoll descriptor, and the iteration itself
(``_run_once``). There is no ``selectors`` object, no ``heapq`` and no Python loop iteration. What
asyncio builds on ``call_soon``/``add_reader`` — sockets and transports, ``sock_*``, streams, TLS,
servers, ``getaddrinfo``, ``run_in_executor``, signals, subprocesses — is asyncio's own, proven Python.

Usable on its own, as uvloop's loop is: ``percore.run(main())``, ``percore.new_event_loop()``,
``asyncio.run(main(), loop_factory=percore.new_event_loop)`` or ``asyncio.Runner(loop_factory=...)``,
or ``asyncio.set_event_loop_policy(percore.EventLoopPolicy())``. See docs/event-loop.md.

Outside debug mode ``call_soon``, ``call_later``, ``call_at``, ``call_soon_threadsafe`` and ``time`` are
the reactor's own methods, bound on the instance, so futures and tasks call Rust directly (and
``get_debug``, which every new future calls, is ``bool``, False without a Python frame); in debug
mode (``set_debug(True)``) asyncio's checks (wrong thread, coroutine passed as callback) run first.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
import sys
import threading
from asyncio import base_events, events, format_helpers, unix_events
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._runtime import Reactor
from ._transport import SocketTransport

_T = TypeVar("_T")

# Methods served straight by the reactor outside debug mode (see the module docstring).
_FAST_PATH = ("call_soon", "call_later", "call_at", "call_soon_threadsafe", "time")
# Served by the reactor in every mode, transport check included (asyncio's _ensure_fd_no_transport).
_CHECKED_IO = ("add_reader", "remove_reader", "add_writer", "remove_writer")


class _ReactorSelector:
    """What asyncio's selector-loop code still reads of ``loop._selector``: transport reprs and close."""

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd = selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        mask, reader, writer = self._reactor.get_key(fd)
        return selectors.SelectorKey(fileobj, fd, mask, (reader, writer))

    def get_map(self) -> dict[int, selectors.SelectorKey]:
        return {fd: self.get_key(fd) for fd in self._reactor.fds()}

    def select(self, timeout: float | None = None) -> list:
        raise RuntimeError("percore's event loop waits in its Rust reactor; it has no select()")

    def close(self) -> None:
        self._reactor.close()


def _run_foreign_handle(handle: asyncio.Handle) -> None:
    if not handle.cancelled():
        handle._run()


class EventLoop(unix_events._UnixSelectorEventLoop):  # type: ignore[name-defined,misc]
    """An asyncio event loop whose reactor (queues, timers, epoll, iteration) is Rust."""

    def __init__(self) -> None:
        # Before asyncio's __init__: it registers the self-pipe (signals) through _add_reader.
        self._reactor = Reactor(self)
        self._percore_agen_hooks: tuple | None = None
        super().__init__(_ReactorSelector(self._reactor))
        # asyncio's create_future is a Python frame around the C Future; a partial is called from C.
        # (A cycle through the instance dict, collected with the loop.)
        self.create_future = functools.partial(asyncio.Future, loop=self)
        # The public add_/remove_reader/writer (transport check included) straight to Rust, unless a
        # subclass overrides them: database drivers call them around every query. (A subclass's super()
        # call reaches asyncio's own, which check in Python and call the private ones below.)
        self._reactor.bind_transports(self._transports.data)
        for name in _CHECKED_IO:
            if getattr(type(self), name) is getattr(EventLoop, name):
                self.__dict__[name] = getattr(self._reactor, f"{name}_checked")

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        # asyncio's, with the transport whose read and first send are Rust (percore/_transport.py).
        self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    # --- scheduling -------------------------------------------------------------------------------

    def _bind_fast_path(self) -> None:
        if self._debug:
            for name in (*_FAST_PATH, "get_debug"):
                self.__dict__.pop(name, None)
        else:
            for name in _FAST_PATH:
                if name in ("call_soon", "call_soon_threadsafe"):
                    # Builtins that parse their arguments themselves: every Future and Task callback comes
                    # this way.
                    self.__dict__[name] = self._reactor.soon_function(name == "call_soon_threadsafe")
                else:
                    self.__dict__[name] = getattr(self._reactor, name)
            # Every Future and Task asks its loop get_debug() when created (one per database query): asyncio's
            # is a Python frame, `bool()` is False from C (and immortal: no refcount traffic between loops).
            self.__dict__["get_debug"] = bool

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self._reactor.set_debug(bool(enabled))
        self._bind_fast_path()

    def time(self) -> float:
        return self._reactor.time()

    def _traced(self, handle, frame):
        """In debug mode, record where ``handle`` was scheduled (asyncio's ``_source_traceback``)."""
        if self._debug:
            handle._set_source_traceback(format_helpers.extract_stack(frame))
        return handle

    def _call_soon(self, callback, args, context):
        # Only reached in debug mode or through asyncio internals: the fast path binds the reactor's.
        return self._traced(self._reactor.call_soon(callback, *args, context=context), sys._getframe(1))

    def call_at(self, when, callback, *args, context=None):
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        return self._traced(self._reactor.call_at(when, callback, *args, context=context), sys._getframe(1))

    def call_soon_threadsafe(self, callback, *args, context=None):
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = self._reactor.call_soon_threadsafe(callback, *args, context=context)
        return self._traced(handle, sys._getframe(1))

    def _add_callback(self, handle) -> None:
        # asyncio's signal handling queues its own (Python) Handle objects.
        if not handle._cancelled:
            self._reactor.call_soon(_run_foreign_handle, handle)

    def _write_to_self(self) -> None:
        self._reactor.wakeup()

    def _timer_handle_cancelled(self, handle) -> None:
        pass  # the reactor counts cancelled timers itself

    def _percore_callback_error(self, handle, exc: BaseException) -> None:
        """Called by the reactor when a callback raised (asyncio's ``Handle._run``)."""
        if sys.version_info >= (3, 13):
            source = format_helpers._format_callback_source(handle._callback, handle._args, debug=self._debug)
        else:  # no `debug` before 3.13
            source = format_helpers._format_callback_source(handle._callback, handle._args)
        context = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _percore_run_debug(self, handle) -> None:
        """Runs one callback in debug mode, as asyncio's ``_run_once`` does (called by the reactor)."""
        if handle._cancelled:
            return
        try:
            self._current_handle = handle
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                base_events.logger.warning(
                    "Executing %s took %.3f seconds", base_events._format_handle(handle), dt
                )
        finally:
            self._current_handle = None
            # As asyncio's _run_once does: a frame that raised keeps this frame (f_back) and so its locals
            # alive; the handle would keep the task that raised, and its "never retrieved" report, alive.
            del handle

    # --- file descriptors -------------------------------------------------------------------------

    def _add_reader(self, fd, callback, *args):
        self._check_closed()
        return self._reactor.add_reader(selectors._fileobj_to_fd(fd), callback, *args)  # type: ignore[attr-defined]

    def _remove_reader(self, fd) -> bool:
        if self.is_closed():
            return False
        return self._reactor.remove_reader(selectors._fileobj_to_fd(fd))  # type: ignore[attr-defined]

    def _add_writer(self, fd, callback, *args):
        self._check_closed()
        return self._reactor.add_writer(selectors._fileobj_to_fd(fd), callback, *args)  # type: ignore[attr-defined]

    def _remove_writer(self, fd) -> bool:
        if self.is_closed():
            return False
        return self._reactor.remove_writer(selectors._fileobj_to_fd(fd))  # type: ignore[attr-defined]

    def _process_events(self, event_list) -> None:
        raise RuntimeError("percore's event loop dispatches I/O in its Rust reactor")

    # --- running ----------------------------------------------------------------------------------

    def _run_once(self) -> None:
        self._reactor.run_once()

    def run_forever(self) -> None:
        # asyncio's _run_forever_setup/_cleanup (3.13), spelled out so 3.11 and 3.12 behave the same.
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._percore_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook
        )
        try:
            events._set_running_loop(self)
            self._reactor.run_forever()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            if self._percore_agen_hooks is not None:
                sys.set_asyncgen_hooks(*self._percore_agen_hooks)
                self._percore_agen_hooks = None

    def stop(self) -> None:
        self._reactor.stop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """The default policy, creating ``percore.EventLoop`` loops."""

    _loop_factory = EventLoop


def new_event_loop() -> EventLoop:
    """A new percore event loop (not set as the current loop)."""
    return EventLoop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """``asyncio.run(main)`` on a new percore event loop."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop)
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(EventLoopPolicy())
    try:
        return asyncio.run(main, debug=debug)
    finally:
        asyncio.set_event_loop_policy(previous)
