"""Running an app on the loop pool from Python: ``Server`` wraps the Rust pool, ``serve`` runs it until
Ctrl-C or SIGTERM."""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _hooks, _loop, _open_files, _runtime, _threadpool
from ._asgi import Lifespan, choose_interface
from ._logging import BackgroundStreamHandler, log_handler_error, logger
from ._supervisor import DEFAULT_SHUTDOWN_TIMEOUT
from .app import App
from .exceptions import ConfigurationError
from .responses import Response


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    loops: str = "auto"
    routing: str = "local"
    # Each loop thread's event loop: "percore" (percore.EventLoop, reactor in Rust) or "asyncio"
    # (asyncio's selector loop); see docs/event-loop.md.
    loop: str = "percore"
    interface: str = "auto"
    root_path: str = ""
    lifespan: bool = True
    # Limits (None: the Rust defaults, see runtime/src/config.rs and docs/limits.md).
    max_body_size: int | None = None
    header_timeout: float | None = None
    body_timeout: float | None = None
    send_timeout: float | None = None
    max_connections: int | None = None
    max_in_flight: int | None = None
    shutdown_timeout: float | None = None
    ws_max_size: int | None = None
    ws_max_queue: int | None = None
    ws_ping_interval: float | None = None
    ws_ping_timeout: float | None = None
    access_log: bool = False
    # Prometheus metrics on this port when set; 0 picks a free one (see docs/observability.md).
    metrics_port: int | None = None
    # The metrics port's address (None: 127.0.0.1, whatever ``host`` is), e.g. an internal interface.
    metrics_host: str | None = None
    # Set in `--workers` worker processes: the supervisor has probed and reserved the port, so the listeners
    # join their siblings' SO_REUSEPORT group instead of probing (see docs/workers.md).
    shared_port: bool = False
    # X-Forwarded-For/-Proto from these peers name the client and scheme, as under uvicorn (same defaults:
    # on, trusting FORWARDED_ALLOW_IPS or 127.0.0.1,::1); see docs/proxies.md.
    proxy_headers: bool = True
    forwarded_allow_ips: str | None = None
    # Listen on a Unix domain socket at this path (``--uds``) or on an inherited socket (``--fd``, e.g. from
    # systemd) instead of host:port; see docs/sockets.md.
    uds: str | None = None
    fd: int | None = None
    # Listening sockets inherited from a supervisor: one shared by every loop, or one per loop (docs/workers.md).
    listen_fds: list[int] | None = None
    # After this many responses the server stops (a --workers worker asks for its replacement first).
    limit_max_requests: int | None = None
    # Pending connections the listening socket queues (None: 1024; every loop accepts from it).
    backlog: int | None = None
    # Threads of the sync pool that runs ``def`` handlers (None: 2 × loops, at least 4; docs/architecture.md).
    sync_threads: int | None = None
    # HTTPS: a PEM certificate chain and its private key (see docs/tls.md).
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


def trusted_proxies(config: ServerConfig) -> str | None:
    """The peers allowed to set proxy headers, or None when they are not applied at all."""
    if not config.proxy_headers:
        return None
    if config.forwarded_allow_ips is not None:
        return config.forwarded_allow_ips
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


class Server:
    """The loop pool serving one app. ``start()`` returns once every loop is accepting."""

    def __init__(self, app: App | Any, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        self.interface = choose_interface(app, config.interface)
        if config.loop not in _loop.LOOPS:
            raise ConfigurationError(
                f"unknown event loop {config.loop!r}: expected one of {', '.join(_loop.LOOPS)}"
            )
        self._holds_pool = False  # between start() and join(): this server keeps the shared thread pool
        self._stop_requested: float | None = None  # time.monotonic() of the first stop()
        asgi = self.interface == "asgi"
        self._server = _runtime.Server(
            [] if asgi else app.serving_routes(),
            host=config.host,
            port=config.port,
            loops=str(config.loops),
            routing=config.routing,
            loop_factory=functools.partial(_loop.new_running_loop, config.loop),
            response_class=Response,
            on_error=log_handler_error,
            hooks=_hooks.RUNTIME_HOOKS,
            asgi_app=app if asgi else None,
            root_path=config.root_path,
            lifecycle=(lambda: Lifespan(app))
            if asgi and config.lifespan
            else (None if asgi else app._lifecycle),
            exception_responder=None if asgi else app._exception_response,
            max_body_size=config.max_body_size,
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            send_timeout=config.send_timeout,
            max_connections=config.max_connections,
            max_in_flight=config.max_in_flight,
            sync_threads=config.sync_threads,
            shutdown_timeout=config.shutdown_timeout,
            ws_max_size=config.ws_max_size,
            ws_max_queue=config.ws_max_queue,
            ws_ping_interval=config.ws_ping_interval,
            ws_ping_timeout=config.ws_ping_timeout,
            access_log=config.access_log,
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
            shared_port=config.shared_port,
            forwarded_allow_ips=trusted_proxies(config),
            uds=config.uds,
            fd=config.fd,
            listen_fds=config.listen_fds,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
            backlog=config.backlog,
        )

    def start(self) -> None:
        # The shared thread pool of asyncio.to_thread lives while any server runs (see _threadpool).
        _threadpool.acquire()
        try:
            self._server.start()
        except BaseException:
            _threadpool.release(0)
            raise
        self._holds_pool = True

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def host(self) -> str | None:
        return self._server.host

    @property
    def address(self) -> str | None:
        """Where it serves once started: ``http://HOST:PORT``, ``https://HOST:PORT`` or ``unix:PATH``."""
        return self._server.address

    @property
    def responses(self) -> int:
        """Responses every loop has sent so far."""
        return self._server.responses

    @property
    def metrics_port(self) -> int | None:
        return self._server.metrics_port

    @property
    def cores(self) -> list[int]:
        return self._server.cores

    def banner(self) -> str:
        version = sys.version.split()[0]
        build = "free-threaded" if free_threaded_build() else "GIL"
        gil = "enabled" if gil_enabled() else "disabled"
        pins = ", ".join(f"{index}→cpu{core}" for index, core in enumerate(self.cores))
        metrics_host = self.config.metrics_host or "127.0.0.1"
        metrics = f" | metrics http://{metrics_host}:{self.metrics_port}/metrics" if self.metrics_port else ""
        # --loops auto says why it chose N: "(auto: CPU quota 2.0 of cgroup /kubepods/..; affinity 64 CPUs)".
        reason = f" (auto: {self._server.loops_reason})" if self._server.loops_reason else ""
        return (
            f"percore {_runtime.__version__} | Python {version} ({build} build, GIL {gil} at runtime) | "
            f"{self.interface} app | {len(self.cores)} loop(s) pinned [{pins}]{reason} | "
            f"routing {self._server.routing} | {self.config.loop} loop | "
            f"{self.address}{metrics}"
        )

    def wait(self, timeout: float) -> bool:
        return self._server.wait(timeout)

    def stop(self) -> None:
        if self._stop_requested is None:
            self._stop_requested = time.monotonic()
        self._server.stop()

    def join(self) -> None:
        self._server.join()
        if self._holds_pool:
            self._holds_pool = False
            # Once every loop has stopped: jobs still running get what remains of the stop's one shutdown
            # deadline (the whole timeout when the server stopped without stop()).
            timeout = self.config.shutdown_timeout
            timeout = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
            if self._stop_requested is not None:
                timeout = max(0.0, self._stop_requested + timeout - time.monotonic())
            _threadpool.release(timeout)


def serve(
    app: App | Any,
    config: ServerConfig | None = None,
    on_ready: Callable[[], None] | None = None,
    on_request_limit: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop every loop (finishing in-flight requests). ``on_ready`` is
    called once every loop accepts (a ``--workers`` worker tells its supervisor). With
    ``limit_max_requests``, reaching it stops the server, or, given ``on_request_limit`` (a worker), calls it
    once and serves on until the supervisor stops this process."""
    server = Server(app, config)
    limit = server.config.limit_max_requests
    if limit is not None and limit < 1:
        raise ConfigurationError(f"--limit-max-requests must be at least 1, got {limit}")
    signals = _StopSignals()  # nothing is received off the main thread, where no handler can be installed
    if threading.current_thread() is threading.main_thread():
        signals.install()
    open_files = _open_files.raise_limit()
    try:
        server.start()
        _open_files.warn_if_short(open_files, len(server.cores), server.config.max_connections)
        logger.info("%s", server.banner())
        if on_ready is not None:
            on_ready()
        # Short waits so the main thread returns to Python, runs signal handlers and sees what they recorded.
        while signals.received is None:
            # A signal that came during the wait is acted on before the request limit: a stopping server
            # neither recycles nor says it stops for --limit-max-requests.
            if server.wait(0.2) or signals.received is not None:
                break
            if limit is None or server.responses < limit:
                continue
            if on_request_limit is None:
                logger.info(
                    "served %d responses (--limit-max-requests %d): stopping", server.responses, limit
                )
                break
            logger.info("served %d responses (--limit-max-requests %d): recycling", server.responses, limit)
            on_request_limit()
            limit = None
        if signals.received is not None:
            logger.info("stopping: finishing in-flight requests (signal again to force)")
    finally:
        server.stop()
        # In slices, so a second signal is handled while the loops drain.
        while not server.wait(0.1):
            pass
        server.join()
        signals.restore()
    logger.info("stopped")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long a forced exit waits for the log writer to write the lines queued before it.
FORCE_EXIT_DRAIN = 0.5


class _StopSignals:
    """SIGINT and SIGTERM while ``serve`` runs: the first asks for a graceful stop, the second exits at once.

    Both handlers are installed explicitly (as uvicorn does), before the port opens, so either signal stops
    the server cleanly at any point: Python installs its SIGINT handler only when SIGINT was not ignored at
    startup, and a server started in the background by a non-interactive shell, by ``nohup`` or by some
    supervisors inherits it ignored.

    The first signal is only recorded (``received``), never raised: Python runs a handler on the main thread
    between any two bytecodes, and an exception raised there (``KeyboardInterrupt``, what Python's own SIGINT
    handler raises) can land in a lock's ``__enter__`` just after the lock was taken, leaving it held. The
    main thread then blocked forever on its next log line (the log queue's lock): a server that never exited
    after SIGTERM (CI, 3.13t, a signal that came while the banner was being logged). ``serve`` looks at
    ``received`` every 0.2 s instead, as uvicorn's ``handle_exit`` and our ``--workers`` supervisor do."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        else:
            _force_exit(signum)


def _force_exit(signum: int) -> None:
    """The second signal: the lines already queued, one warning, and exit. It runs inside whatever the main
    thread was doing (possibly logging, with the log queue's lock held), so it takes no lock, waits at most
    `FORCE_EXIT_DRAIN` for the log writer, writes only if stderr has room (a stderr nobody reads must not hold
    the exit), and exits whatever happens on the way."""
    try:
        for handler in logger.handlers:
            if isinstance(handler, BackgroundStreamHandler):
                handler.drain(FORCE_EXIT_DRAIN)  # takes no lock
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            __file__,
            0,
            "second signal: exiting without waiting for in-flight requests",
            (),
            None,
        )
        logger.filter(record)  # a --workers worker's "worker N: " prefix
        line = logger.handlers[0].format(record) if logger.handlers else record.getMessage()
        fd = sys.stderr.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if poller.poll(0):  # room for a line (a pipe: a free page): the write does not block
            os.write(fd, (line + "\n").encode("utf-8", "backslashreplace"))
    finally:  # whatever was raised on the way: exit
        os._exit(128 + signum)
