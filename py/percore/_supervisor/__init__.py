"""``runtime serve --workers N`` and ``--reload``: a supervisor process running the server in worker
processes that share one port (see docs/workers.md). By concept: ``processes`` (the ``Supervisor``: listeners,
worker processes, restarts, stopping), ``reload`` (finding and watching the app's sources), ``cpus`` (each
worker's CPU slice) and ``worker`` (what a worker process does on entry).

A worker is ``python -m percore serve ...``: the user's own arguments plus the hidden ``--supervised-*`` flags
that ``Supervisor.worker_argv`` adds. The supervisor

* binds the listeners before any worker starts and holds them until it exits: on TCP one SO_REUSEPORT
  listener per worker (its loops share it, so only a loop free to accept takes a connection), after the
  same busy-port probe the single-process server does (so a port held by another program fails with one
  clear line); with ``--uds`` the one Unix socket (removed at exit). Each worker inherits its share
  (``--supervised-socket-fd``; a user's ``--fd`` is passed on the same way), and a worker that replaces
  another accepts on the same sockets, so the connections queued on them when the old one stops are not
  lost (``--reload``, ``--limit-max-requests``, restarts);
* gives each worker its own slice of the CPU affinity mask (``cpu_slices``); with ``--loops auto`` only the
  first CPUs of the mask that the container's CPU quota pays for are sliced (``_runtime.cpu_budget``), as
  the quota is shared by all workers;
* restarts a worker that exits without being asked to, with a backoff; gives up with an error (exit 1)
  when a worker exits before it serves during the first launch, or ``MAX_START_FAILURES`` times in a row
  later (the app's own error is on stderr, printed by the worker);
* stops every worker with SIGTERM on SIGTERM or SIGINT and waits for them; a second signal SIGKILLs them;
* with ``--reload``, polls the mtimes of the ``*.py`` files under the app's directory and replaces every
  worker when one changes. New workers start next to the old ones (SO_REUSEPORT); the old ones stop only
  once all new ones serve, so code that does not import leaves the old code serving until it is fixed.

Invariant: only the supervisor's main thread touches its state; signal handlers just record the signal.
"""

from .cpus import cpu_slices
from .processes import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    EXIT_GRACE_SECONDS,
    MAX_BACKOFF_SECONDS,
    MAX_START_FAILURES,
    STABLE_SECONDS,
    Supervisor,
    backoff,
)
from .reload import RELOAD_POLL_SECONDS, SourceWatcher, app_source_dir
from .worker import enter_worker

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "EXIT_GRACE_SECONDS",
    "MAX_BACKOFF_SECONDS",
    "MAX_START_FAILURES",
    "RELOAD_POLL_SECONDS",
    "STABLE_SECONDS",
    "SourceWatcher",
    "Supervisor",
    "app_source_dir",
    "backoff",
    "cpu_slices",
    "enter_worker",
]
