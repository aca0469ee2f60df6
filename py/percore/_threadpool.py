"""The one thread pool per process behind ``await asyncio.to_thread(...)``,
``loop.run_in_executor(None, ...)`` and ``percore.run_in_threadpool(...)`` on every loop.

asyncio gives each event loop its own default executor, created on first use: N loops would start N pools
of up to ``min(32, cpus + 4)`` threads each. percore makes one shared pool every loop's default executor.

Size: ``min(32, cpus + 4)`` threads, ``cpus`` being the process's CPU budget (what ``--loops auto`` runs: the
affinity mask capped by the cgroup CPU quota). That is CPython's own default (``ThreadPoolExecutor`` since
3.8, ``os.process_cpu_count()`` since 3.13) applied to the CPUs the process may really use: ``cpus`` threads
keep every core busy with CPU-bound work (in parallel on 3.13t; on a GIL build they share the GIL), and the
4 extra keep a few slots for blocking calls (a sync database driver, ``requests``) that wait rather than
compute, so they do not queue behind a core's worth of CPU jobs. The cap keeps a 256-core host from starting
hundreds of threads. Work beyond the size waits in the pool's queue.

Affinity: the pool's threads are started by whichever loop thread first submits work, and a new thread
inherits the affinity of the thread that starts it; ``_affinity`` gives threads started on a loop thread
the process's mask, so offloaded work runs on every core instead of on top of the loop that submitted it.

Lifetime: every ``Server.start`` holds the pool and ``Server.join`` lets go of it; the last one shuts it
down once its loops have stopped — queued jobs are cancelled, running ones are waited for up to a timeout
(what ``asyncio.run`` does with its default executor). A later server gets a fresh pool. A job still running
past that timeout is ``stranded()``: the interpreter's exit joins the pool's threads and would wait for it
however long it runs, so ``runtime serve`` exits without it (``cli.main``).

Invariant: at most one live pool per process; a loop's default executor is the pool that was live when the
loop was created, and a loop closing never shuts the shared pool down (``_loop`` detaches it first).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import _runtime
from ._affinity import process_mask
from ._logging import logger

T = TypeVar("T")

#: CPython's ThreadPoolExecutor default: min(MAX_THREADS, cpus + EXTRA_THREADS).
MAX_THREADS = 32
EXTRA_THREADS = 4

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_holders = 0
#: The shutdown of the last pool released with jobs still running past the timeout (None: none was).
_stranded_shutdown: threading.Thread | None = None


def size(mask: set[int]) -> int:
    """How many threads the pool runs: ``min(32, cpus + 4)`` over the process's CPU budget."""
    cpus, _ = _runtime.cpu_budget(len(mask))
    return min(MAX_THREADS, cpus + EXTRA_THREADS)


def shared() -> ThreadPoolExecutor:
    """The process's pool, created on first use."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=size(process_mask()), thread_name_prefix="percore-pool")
        return _pool


def acquire() -> None:
    """A server starts: keep the pool alive until its matching ``release``."""
    global _holders
    with _lock:
        _holders += 1


def release(timeout: float) -> None:
    """A server has stopped; the last one shuts the pool down, waiting up to ``timeout`` seconds for jobs
    still running (queued ones are cancelled)."""
    global _holders, _pool, _stranded_shutdown
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders > 0 or _pool is None:
            return
        pool, _pool = _pool, None
    # In a thread, so a job that never returns cannot hold the stop forever (as asyncio.run's
    # shutdown_default_executor); the interpreter would still join its threads at exit (cli.main does not
    # let it: `stranded()`).
    waiter = threading.Thread(
        target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, name="percore-pool-shutdown"
    )
    waiter.start()
    waiter.join(timeout)
    if waiter.is_alive():
        _stranded_shutdown = waiter
        logger.warning(
            "thread pool: jobs still running at the shutdown deadline (%.1fs after the loops stopped); "
            "not waiting for them",
            timeout,
        )


def stranded() -> bool:
    """Whether jobs of a released pool still run past its timeout (the interpreter's exit would wait for
    them)."""
    return _stranded_shutdown is not None and _stranded_shutdown.is_alive()


async def run_in_threadpool(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` on the process's shared thread pool and return its result, leaving this
    loop free to serve other requests meanwhile. Starlette's name; on a percore loop it is the same pool
    as ``await asyncio.to_thread(func, ...)``. Context variables are copied in, as ``asyncio.to_thread``
    does."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(shared(), call)
