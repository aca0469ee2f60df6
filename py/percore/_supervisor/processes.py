"""The ``Supervisor``: it holds the listeners, runs the worker processes, restarts the ones that die, replaces
them on ``--reload`` and ``--limit-max-requests``, and stops them all on a signal (see the package docstring
for the rules).

Invariant: only the supervisor's main thread touches its state; signal handlers just record the signal.
Over 500 lines on purpose: one state machine over the worker slots (serving, pending, replacing, retiring),
which every method reads and changes; split, each part would need all of it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import _runtime
from .._logging import logger
from ..exceptions import StartupError
from .cpus import cpu_slices
from .reload import RELOAD_POLL_SECONDS, SourceWatcher, app_source_dir

#: Consecutive start-up failures of one worker (after the first launch) before the supervisor gives up.
MAX_START_FAILURES = 5
#: A worker that has served this long counts as healthy: its next crash is restarted at once again.
STABLE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 10.0
#: The Rust default of --shutdown-timeout, and what workers get beyond it to run lifespan shutdown and exit.
DEFAULT_SHUTDOWN_TIMEOUT = _runtime.DEFAULT_SHUTDOWN_TIMEOUT
EXIT_GRACE_SECONDS = 5.0


def backoff(failures: int) -> float:
    """Seconds before restarting a worker that failed ``failures`` times in a row: 0, 0.5, 1, 2, 4, 8, 10."""
    return 0.0 if failures <= 1 else min(0.5 * 2 ** (failures - 2), MAX_BACKOFF_SECONDS)


def _format_address(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)
class _Worker:
    index: int
    process: subprocess.Popen
    ready_at: float | None = None
    retired: str = ""  # why it was told to stop, once it was

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def send(self, signum: int) -> None:
        try:
            self.process.send_signal(signum)  # a no-op once reaped, so never hits a reused pid
        except ProcessLookupError:
            pass

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with {code}"


class Supervisor:
    """Runs ``workers`` worker processes until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(
        self,
        serve_argv: list[str],
        *,
        app: str,
        host: str,
        port: int,
        workers: int,
        loops: str,
        shutdown_timeout: float | None,
        reload: bool = False,
        reload_dirs: list[str] = (),
        metrics_port: int | None = None,
        uds: str | None = None,
        fd: int | None = None,
        secure: bool = False,
        backlog: int | None = None,
        app_dir: str | None = None,
    ) -> None:
        self.backlog = backlog
        self.app_dir = app_dir
        self.serve_argv = list(serve_argv)
        self.uds = uds
        # The listening socket every worker inherits (--uds: created here; --fd: the user's), or None for
        # TCP, where each worker binds its own SO_REUSEPORT listeners on the reserved port.
        self.socket_fd = fd
        self.where = ""  # for the log: http(s)://HOST:PORT, unix:PATH or the inherited fd
        self.scheme = "https" if secure else "http"
        self.metrics_port = metrics_port
        self.app = app
        self.host = host
        self.port = port
        self.workers = workers
        mask = sorted(os.sched_getaffinity(0))
        # --loops auto: one cgroup CPU quota covers every worker, so slice only the CPUs it pays for (each
        # worker's own `auto` then runs one loop per CPU of its slice, and the total matches one process's).
        self.loops_reason = ""
        if loops.strip().lower() == "auto":
            budget, why = _runtime.cpu_budget()
            if budget < len(mask):
                mask = mask[:budget]
                self.loops_reason = f" (auto: {why})"
        self.cpus = cpu_slices(mask, workers, loops)
        self.loops = loops
        self.worker_fds: list[list[int]] = []  # per worker index: the listening sockets it inherits
        self.slot_listeners: list[_runtime.TcpListeners] = []  # TCP: the listeners of each worker index
        self.stop_timeout = (shutdown_timeout or DEFAULT_SHUTDOWN_TIMEOUT) + EXIT_GRACE_SECONDS
        self.reload = reload
        self.reload_dirs = [Path(d).resolve() for d in reload_dirs]
        self.serving: list[_Worker | None] = [None] * workers
        self.pending: list[_Worker] = []  # the next generation, while --reload starts it
        # index -> the worker starting in place of one that reached --limit-max-requests (which serves on
        # until its replacement does, so the port never goes unserved).
        self.replacing: dict[int, _Worker] = {}
        self.retiring: dict[_Worker, float] = {}  # told to stop -> when to SIGKILL
        self.restart_at: dict[int, float] = {}
        self.failures = [0] * workers  # consecutive exits, for the backoff
        self.start_failures = [0] * workers  # consecutive exits before serving
        self.launched = False
        self.signals: list[int] = []
        self.watcher: SourceWatcher | None = None
        self._ready_fd = -1
        self._ready_buffer = b""

    def worker_argv(self, index: int) -> list[str]:
        """Worker ``index``'s command line: the user's ``serve`` arguments (``--workers``/``--reload`` are
        ignored by a worker), the reserved address, and the flags that make it a worker. Per-worker flags
        belong here."""
        return [
            sys.executable,
            "-m",
            "percore",
            *self.serve_argv,
            "--supervised-socket-fd",
            ",".join(map(str, self.worker_fds[index])),
            "--supervised-index",
            str(index),
            "--supervised-by",
            str(os.getpid()),
            "--supervised-cpus",
            ",".join(map(str, self.cpus[index])),
            "--supervised-ready-fd",
            str(self._ready_fd),
            # Each worker is its own pool with its own counters: worker i serves them on PORT + i (0: each
            # worker picks a free port and prints it in its banner).
            *(
                ("--metrics-port", str(self.metrics_port and self.metrics_port + index))
                if self.metrics_port is not None
                else ()
            ),
        ]

    # --- running ---

    def run(self) -> int:
        """Serve until a signal; returns the exit code. Raises ``StartupError`` when the port is taken or
        the workers cannot start."""
        reservation: _runtime.UnixSocket | None = None
        if self.uds is not None:
            reservation = _runtime.UnixSocket(self.uds, self.backlog)
            self.worker_fds = [[reservation.fileno()]] * self.workers
            self.where = f"unix:{self.uds}"
        elif self.socket_fd is not None:
            self.worker_fds = [[self.socket_fd]] * self.workers
            self.where = f"the inherited socket --fd {self.socket_fd}"
        else:
            # One set of listeners per worker slot: the first probes the port (and picks it for port 0), the
            # others join its SO_REUSEPORT group.
            for index in range(self.workers):
                listeners = _runtime.TcpListeners(self.host, self.port, 1, self.backlog, shared=index > 0)
                self.host, self.port = listeners.host, listeners.port
                self.slot_listeners.append(listeners)
            self.worker_fds = [listeners.filenos() for listeners in self.slot_listeners]
            self.where = f"{self.scheme}://{_format_address((self.host, self.port))}"
        ready_r, self._ready_fd = os.pipe()
        wake_r, wake_w = os.pipe()
        for fd in (ready_r, wake_r, wake_w):
            os.set_blocking(fd, False)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select when a worker exits
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            if self.reload:
                directories = [app_source_dir(self.app, self.app_dir), *self.reload_dirs]
                self.watcher = SourceWatcher(directories)
                logger.info("reload: watching *.py under %s", ", ".join(map(str, directories)))
            slices = "; ".join(f"{i}→cpu{','.join(map(str, cpus))}" for i, cpus in enumerate(self.cpus))
            logger.info(
                "supervisor (pid %d): starting %d worker(s) on %s [%s]%s",
                os.getpid(),
                self.workers,
                self.where,
                slices,
                self.loops_reason,
            )
            for index in range(self.workers):
                self.serving[index] = self._spawn(index)
            try:
                self._supervise(ready_r, wake_r)
            except StartupError:
                self._stop_all(wake_r, len(self.signals))
                raise
            return self._shutdown(wake_r)
        except BaseException:
            for worker in self._all():
                worker.send(signal.SIGKILL)
                worker.process.wait()
            raise
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (ready_r, self._ready_fd, wake_r, wake_w):
                os.close(fd)
            for listeners in self.slot_listeners:
                listeners.close()
            if reservation is not None:
                reservation.close()  # the socket file is removed with it

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)

    def _all(self) -> list[_Worker]:
        return (
            [w for w in self.serving if w is not None]
            + self.pending
            + list(self.replacing.values())
            + list(self.retiring)
        )

    def _spawn(self, index: int) -> _Worker:
        try:
            # Own session: a Ctrl-C in the terminal reaches the supervisor only, which stops the workers once.
            process = subprocess.Popen(
                self.worker_argv(index),
                pass_fds=(self._ready_fd, *self.worker_fds[index]),
                start_new_session=True,
            )
        except OSError as error:
            raise StartupError(f"cannot start worker {index}: {error}") from None
        logger.debug("worker %d (pid %d) started: %s", index, process.pid, " ".join(process.args))
        return _Worker(index, process)

    def _wait(self, fds: list[int], timeout: float) -> None:
        select.select(fds, [], [], max(0.0, timeout))

    def _supervise(self, ready_r: int, wake_r: int) -> None:
        next_scan = time.monotonic() + RELOAD_POLL_SECONDS
        while not self.signals:
            now = time.monotonic()
            deadlines = [
                next_scan if self.watcher else now + 1.0,
                *self.restart_at.values(),
                *self.retiring.values(),
            ]
            self._wait([ready_r, wake_r], min(deadlines) - now)
            _drain(wake_r)
            if self.signals:
                break
            self._read_ready(ready_r)
            self._reap(ready_r)
            now = time.monotonic()
            for index, due in list(self.restart_at.items()):
                if now >= due:
                    del self.restart_at[index]
                    if self.serving[index] is None:
                        self.serving[index] = self._spawn(index)
            for worker, deadline in self.retiring.items():
                if now >= deadline:
                    worker.send(signal.SIGKILL)
                    self.retiring[worker] = now + 1.0
            if self.watcher and now >= next_scan:
                changes = self.watcher.changes()
                if changes:
                    self._reload(changes)
                next_scan = time.monotonic() + RELOAD_POLL_SECONDS

    def _read_ready(self, ready_r: int) -> None:
        while True:
            try:
                chunk = os.read(ready_r, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._ready_buffer += chunk
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        now = time.monotonic()
        for line in lines:
            if line.startswith(b"recycle "):
                self._recycle(line.split()[1])
                continue
            worker = next((w for w in self._all() if str(w.pid).encode() == line.strip()), None)
            if worker is None or worker in self.retiring:
                continue
            worker.ready_at = now
            self.start_failures[worker.index] = 0
            logger.debug("worker %d (pid %d) serving", worker.index, worker.pid)
        if not self.launched and all(w is not None and w.ready_at for w in self.serving):
            self.launched = True
            logger.info(
                "%d worker(s) serving on %s (pids %s)",
                self.workers,
                self.where,
                ", ".join(str(w.pid) for w in self.serving if w is not None),
            )
        for index, worker in list(self.replacing.items()):
            if worker.ready_at:
                del self.replacing[index]
                old = self.serving[index]
                if old is not None:
                    self._retire(old, "recycled (--limit-max-requests)")
                self.serving[index] = worker
                logger.info("worker %d (pid %d) serving in place of the recycled one", index, worker.pid)
        if self.pending and all(w.ready_at for w in self.pending):
            for worker in self.pending:
                old = self.serving[worker.index]
                if old is not None:
                    self._retire(old, "replaced")
                self.serving[worker.index] = worker
            self.pending = []
            self.restart_at.clear()
            self.launched = True
            logger.info(
                "reload: %d new worker(s) serving (pids %s)",
                self.workers,
                ", ".join(str(w.pid) for w in self.serving if w is not None),
            )

    def _renew_listeners(self, index: int) -> None:
        """A worker died unasked: replace its slot's TCP listeners with fresh ones (resetting what was queued
        on the old ones, as the worker's death would have without the supervisor holding them). The fresh
        ones listen at once, so the connections hashed to them wait for the restart; binding them without
        listening until the replacement takes them is the next step (see the session-5 note)."""
        if not self.slot_listeners:
            return  # a Unix or inherited socket: shared by every worker, the others keep accepting on it
        self.slot_listeners[index].close()
        try:
            listeners = _runtime.TcpListeners(self.host, self.port, 1, self.backlog, shared=True)
        except StartupError as error:
            logger.error(
                "worker %d: cannot bind its listeners again (%s); its replacement will fail", index, error
            )
            return
        self.slot_listeners[index] = listeners
        self.worker_fds[index] = listeners.filenos()

    def _recycle(self, pid: bytes) -> None:
        """A serving worker reached --limit-max-requests: start its replacement (unless a reload is
        already replacing every worker)."""
        worker = next((w for w in self.serving if w is not None and str(w.pid).encode() == pid), None)
        if worker is None or worker.index in self.replacing or self.pending:
            return
        logger.info(
            "worker %d (pid %d) reached --limit-max-requests: starting its replacement",
            worker.index,
            worker.pid,
        )
        self.replacing[worker.index] = self._spawn(worker.index)

    def _reap(self, ready_r: int) -> None:
        exited = [w for w in self.serving if w is not None and not w.running()]
        failed = next((w for w in self.pending if not w.running()), None)
        failed_replacements = [w for w in self.replacing.values() if not w.running()]
        if exited or failed or failed_replacements:  # a worker may have reported ready just before it exited
            self._read_ready(ready_r)
        for worker in failed_replacements:
            if self.replacing.get(worker.index) is worker:
                del self.replacing[worker.index]
                logger.error(
                    "worker %d's replacement (pid %d) %s before serving; the worker it was to replace serves on",
                    worker.index,
                    worker.pid,
                    worker.describe_exit(),
                )
        now = time.monotonic()
        for worker in exited:
            self.serving[worker.index] = None
            if worker.index in self.replacing:  # its replacement is starting: it takes the slot, no restart
                logger.warning(
                    "worker %d (pid %d) %s while its replacement starts",
                    worker.index,
                    worker.pid,
                    worker.describe_exit(),
                )
                continue
            self._renew_listeners(worker.index)
            self._serving_exited(worker, now)
        if failed is not None:
            self.pending.remove(failed)
            logger.error(
                "reload: new worker %d (pid %d) %s before the new workers took over; %s; waiting for the next change",
                failed.index,
                failed.pid,
                failed.describe_exit(),
                "the previous code keeps serving" if any(self.serving) else "no worker is serving",
            )
            for worker in self.pending:
                self._retire(worker, "abandoned new")
            self.pending = []
        for worker in [w for w in self.retiring if not w.running()]:
            del self.retiring[worker]
            logger.info(
                "%s worker %d (pid %d) %s", worker.retired, worker.index, worker.pid, worker.describe_exit()
            )

    def _serving_exited(self, worker: _Worker, now: float) -> None:
        index, what = worker.index, worker.describe_exit()
        if worker.ready_at is None:
            if self.watcher is not None:
                logger.error(
                    "worker %d (pid %d) %s before serving; waiting for a source change (--reload)",
                    index,
                    worker.pid,
                    what,
                )
                return
            if not self.launched:
                raise StartupError(
                    f"worker {index} (pid {worker.pid}) {what} before serving (see its error above)"
                )
            self.start_failures[index] += 1
            if self.start_failures[index] >= MAX_START_FAILURES:
                raise StartupError(
                    f"worker {index} failed to start {self.start_failures[index]} times in a row "
                    f"(last: {what}); giving up"
                )
        elif now - worker.ready_at >= STABLE_SECONDS:
            self.failures[index] = 0
        self.failures[index] += 1
        delay = backoff(self.failures[index])
        logger.warning(
            "worker %d (pid %d) %s; restarting%s", index, worker.pid, what, f" in {delay:g}s" if delay else ""
        )
        self.restart_at[index] = now + delay

    def _retire(self, worker: _Worker, why: str) -> None:
        worker.retired = why
        worker.send(signal.SIGTERM)
        self.retiring[worker] = time.monotonic() + self.stop_timeout

    def _reload(self, changes: list[str]) -> None:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        logger.info("reload: %s changed%s; starting %d new worker(s)", changes[0], more, self.workers)
        for worker in [*self.pending, *self.replacing.values()]:
            self._retire(worker, "abandoned new")
        self.replacing.clear()
        self.restart_at.clear()  # the new generation fills every slot
        self.pending = [self._spawn(index) for index in range(self.workers)]

    # --- stopping ---

    def _stop_all(self, wake_r: int, signals_expected: int) -> tuple[list[_Worker], bool]:
        """SIGTERM every worker and wait up to the stop timeout (SIGKILL after it, or on a signal beyond
        the ``signals_expected`` that started the stop). Returns the workers told to stop and whether any
        had to be killed."""
        stopping = [w for w in self.serving if w is not None] + self.pending + list(self.replacing.values())
        for worker in stopping:
            worker.send(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        killed = False
        while True:
            alive = [w for w in self._all() if w.running()]
            if not alive:
                return stopping, killed
            if not killed and len(self.signals) > signals_expected:
                logger.warning("second signal: killing %d worker(s)", len(alive))
                killed = True
            elif not killed and time.monotonic() >= deadline:
                logger.error(
                    "%d worker(s) did not stop within %gs; killing them", len(alive), self.stop_timeout
                )
                killed = True
            if killed:
                for worker in alive:
                    worker.send(signal.SIGKILL)
            self._wait([wake_r], 0.1)
            _drain(wake_r)

    def _shutdown(self, wake_r: int) -> int:
        signum = self.signals[0]
        logger.info(
            "%s: stopping %d worker(s) (signal again to force)", signal.Signals(signum).name, len(self._all())
        )
        stopping, killed = self._stop_all(wake_r, 1)
        if len(self.signals) > 1:
            return 128 + self.signals[1]
        unclean = [
            w
            for w in stopping
            if w.process.returncode != 0
            and not (w.ready_at is None and w.process.returncode == -signal.SIGTERM)
        ]
        for worker in unclean:
            logger.error(
                "worker %d (pid %d) %s while stopping", worker.index, worker.pid, worker.describe_exit()
            )
        logger.info("stopped")
        return 1 if killed or unclean else 0


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
