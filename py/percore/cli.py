"""The ``runtime`` command: ``runtime serve MODULE:ATTR [--loops auto|N] [--routing ...]``."""

from __future__ import annotations

import argparse
import atexit
import importlib
import inspect
import os
import sys
from typing import Any

from . import _about, _logging, _runtime, _supervisor, _threadpool
from ._asgi import INTERFACES
from ._loop import LOOPS
from .exceptions import AppLoadError, ConfigurationError, PercoreError
from .server import ServerConfig, serve

ROUTING_POLICIES = _runtime.ROUTING_POLICIES


def load_app(target: str, app_dir: str | None = None) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) and return the object it names; ``MODULE`` is looked
    for in ``app_dir`` (``--app-dir``) first, then the current directory, then the usual ``sys.path``."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"expected MODULE:ATTR (e.g. examples.hello:api), got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if app_dir is not None:
        if not os.path.isdir(app_dir):
            raise AppLoadError(f"--app-dir {app_dir!r} is not a directory")
        sys.path.insert(0, os.path.abspath(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise AppLoadError(f"cannot import module {module_name!r}: {error}") from None
        raise AppLoadError(f"importing {module_name!r} failed: {type(error).__name__}: {error}") from error
    except Exception as error:
        raise AppLoadError(f"importing {module_name!r} failed: {type(error).__name__}: {error}") from error
    app = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return app


def build_app(target: str, factory: Any) -> Any:
    """``--factory``: ``factory`` (what ``target`` named) called with no arguments returns the app."""
    if not callable(factory):
        raise AppLoadError(f"--factory: {target!r} is not callable ({type(factory).__name__})")
    try:
        app = factory()
    except Exception as error:
        raise AppLoadError(f"the app factory {target!r} failed: {type(error).__name__}: {error}") from error
    if inspect.iscoroutine(app):
        app.close()  # never awaited: closed here so that no "never awaited" warning adds a second line
        raise AppLoadError(f"--factory: {target!r} is an async def; the factory must be a plain function")
    if app is None:
        raise AppLoadError(f"the app factory {target!r} returned None (did it forget to return the app?)")
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime", description="percore: a thread-per-core Python web runtime"
    )
    parser.add_argument(
        "--version",
        action=_about.VersionAction,
        help="print percore's version, the interpreter and whether the GIL is enabled, then exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve an app")
    run.add_argument("app", metavar="MODULE:ATTR", help="the app to serve, e.g. examples.hello:api")
    run.add_argument(
        "--app-dir",
        metavar="DIR",
        help="look for MODULE in DIR first (default: the current directory), as uvicorn's --app-dir",
    )
    run.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:ATTR is a function returning the app (called once per worker process), as in uvicorn",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    run.add_argument(
        "--uds",
        metavar="PATH",
        help="listen on a Unix domain socket at PATH instead of --host/--port, e.g. behind nginx on the "
        "same machine (docs/sockets.md)",
    )
    run.add_argument(
        "--fd",
        type=int,
        help="listen on this inherited, bound socket (TCP or Unix) instead of --host/--port, e.g. from "
        "systemd socket activation",
    )
    run.add_argument(
        "--loops",
        default="auto",
        help="'auto' (one per CPU in the affinity mask, at most the cgroup CPU quota rounded up) or a count "
        "(default auto)",
    )
    run.add_argument("--routing", choices=ROUTING_POLICIES, default="local", help="default local")
    run.add_argument(
        "--loop",
        choices=("auto", *LOOPS),
        default="auto",
        help="each loop thread's event loop: percore's own, with its reactor in Rust, or asyncio's selector "
        "loop (default auto = percore)",
    )
    run.add_argument(
        "--backlog",
        type=int,
        help="pending connections the listening socket queues (default 1024; every loop accepts from it; "
        "the kernel caps it at net.core.somaxconn)",
    )
    run.add_argument(
        "--ssl-certfile",
        metavar="PEM",
        help="serve HTTPS with this certificate chain (server certificate first); needs --ssl-keyfile "
        "(docs/tls.md)",
    )
    run.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key (not encrypted)")
    run.add_argument(
        "--interface",
        choices=INTERFACES,
        default="auto",
        help="auto (default): a percore.App natively, any other ASGI 3 callable as ASGI",
    )
    run.add_argument("--root-path", default="", help="ASGI root_path, for apps mounted below a prefix")
    run.add_argument(
        "--no-lifespan", action="store_true", help="do not run the ASGI lifespan protocol on the loops"
    )
    run.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    run.add_argument(
        "--access-log",
        action="store_true",
        help="one Common Log Format line per request on stderr (off by default)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; docs/observability.md)",
    )
    run.add_argument(
        "--metrics-host",
        help="the address the metrics port binds (default 127.0.0.1, whatever --host is), e.g. an internal "
        "interface",
    )
    run.add_argument(
        "--no-proxy-headers",
        action="store_true",
        help="ignore X-Forwarded-For/-Proto even from trusted peers (docs/proxies.md)",
    )
    run.add_argument(
        "--forwarded-allow-ips",
        metavar="LIST",
        help="peers (IPs, networks like 10.0.0.0/8, or '*') whose X-Forwarded-For/-Proto name the client "
        "and scheme; default $FORWARDED_ALLOW_IPS or 127.0.0.1,::1, as uvicorn",
    )
    processes = run.add_argument_group("processes (see docs/workers.md)")
    processes.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port, each with its own --loops and its own slice of the CPUs; "
        "a supervisor restarts any that dies (default 1: no supervisor). On GIL builds, the way to use "
        "many cores",
    )
    processes.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the worker(s) when a *.py file under the app module's directory (or a "
        "--reload-dir) changes; code that fails to import leaves the previous code serving",
    )
    processes.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also watch DIR for --reload (repeatable)",
    )
    # Set by the supervisor on its workers' command lines (_supervisor.Supervisor.worker_argv).
    processes.add_argument("--supervised-index", type=int, help=argparse.SUPPRESS)
    processes.add_argument("--supervised-by", type=int, help=argparse.SUPPRESS)
    processes.add_argument("--supervised-cpus", help=argparse.SUPPRESS)
    processes.add_argument("--supervised-ready-fd", type=int, help=argparse.SUPPRESS)
    # The listening sockets the supervisor holds for this worker: its TCP listeners, or the --uds/--fd socket.
    processes.add_argument("--supervised-socket-fd", help=argparse.SUPPRESS)  # FD[,FD...]: shared/per loop
    limits = run.add_argument_group("limits (see docs/limits.md)")
    limits.add_argument("--max-body-size", type=int, help="bytes; larger bodies get 413 (default 16 MiB)")
    limits.add_argument(
        "--header-timeout",
        type=float,
        help="seconds to send a request head; also the keep-alive idle limit (30)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        help="seconds a request body may stall (no bytes arriving) before 408 and close (default 60)",
    )
    limits.add_argument(
        "--send-timeout",
        type=float,
        help="seconds a client may take no response bytes (not reading) before it is closed (default 60)",
    )
    limits.add_argument("--max-connections", type=int, help="open connections per loop (default 10000)")
    limits.add_argument(
        "--sync-threads", type=int, help="threads running `def` handlers (default 2 × loops, at least 4)"
    )
    limits.add_argument(
        "--max-in-flight", type=int, help="requests in flight per loop; beyond it 503 + Retry-After (4096)"
    )
    limits.add_argument(
        "--ws-max-size",
        type=int,
        help="bytes; a larger WebSocket message closes it with 1009 (default 16 MiB, as uvicorn)",
    )
    limits.add_argument(
        "--ws-max-queue",
        type=int,
        help="WebSocket messages queued for the app; while full the client is not read (default 32, as uvicorn)",
    )
    limits.add_argument(
        "--ws-ping-interval",
        type=float,
        help="seconds between keepalive pings on each WebSocket; 0 disables (default 20, as uvicorn)",
    )
    limits.add_argument(
        "--ws-ping-timeout",
        type=float,
        help="seconds a WebSocket client has to answer a ping before it is closed with 1011 (default 20)",
    )
    limits.add_argument(
        "--limit-max-requests",
        type=int,
        metavar="N",
        help="after N responses, stop (finishing in-flight requests); under --workers the supervisor starts a "
        "replacement first, so leaky apps are recycled without a gap (docs/workers.md)",
    )
    limits.add_argument(
        "--shutdown-timeout", type=float, help="seconds in-flight requests get after SIGTERM (default 5)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``runtime ...``: returns the exit code, but exits the process itself when a thread-pool job outlived
    the server's shutdown deadline (see `_exit_without_stranded_jobs`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = _parser().parse_args(argv)
    _logging.configure(arguments.log_level)
    worker = arguments.supervised_index is not None
    try:
        if arguments.limit_max_requests is not None and arguments.limit_max_requests < 1:
            raise ConfigurationError(
                f"--limit-max-requests must be at least 1, got {arguments.limit_max_requests}"
            )
        if not worker and (arguments.workers != 1 or arguments.reload):
            return _supervise(argv, arguments)
        on_ready = on_request_limit = None
        if worker:  # before the app is imported and the loops read the affinity mask
            on_ready, on_request_limit = _supervisor.enter_worker(
                arguments.supervised_index,
                arguments.supervised_by,
                arguments.supervised_cpus,
                arguments.supervised_ready_fd,
            )
        if arguments.uds is not None and arguments.fd is not None:
            raise ConfigurationError("--uds and --fd are exclusive: pick one")
        uds, fd, listen_fds = arguments.uds, arguments.fd, None
        if arguments.supervised_socket_fd is not None:
            # The supervisor's listeners: one socket shared by the worker's loops (TCP: one per worker).
            inherited = [int(part) for part in arguments.supervised_socket_fd.split(",")]
            uds, fd = None, None
            if len(inherited) == 1:
                fd = inherited[0]
            else:
                listen_fds = inherited
        app = load_app(arguments.app, arguments.app_dir)
        if arguments.factory:
            app = build_app(arguments.app, app)
        config = ServerConfig(
            host=arguments.host,
            port=arguments.port,
            loops=arguments.loops,
            routing=arguments.routing,
            loop=LOOPS[0] if arguments.loop == "auto" else arguments.loop,
            interface=arguments.interface,
            root_path=arguments.root_path,
            lifespan=not arguments.no_lifespan,
            max_body_size=arguments.max_body_size,
            header_timeout=arguments.header_timeout,
            body_timeout=arguments.body_timeout,
            send_timeout=arguments.send_timeout,
            max_connections=arguments.max_connections,
            max_in_flight=arguments.max_in_flight,
            sync_threads=arguments.sync_threads,
            shutdown_timeout=arguments.shutdown_timeout,
            ws_max_size=arguments.ws_max_size,
            ws_max_queue=arguments.ws_max_queue,
            ws_ping_interval=arguments.ws_ping_interval,
            ws_ping_timeout=arguments.ws_ping_timeout,
            access_log=arguments.access_log,
            metrics_port=arguments.metrics_port,
            metrics_host=arguments.metrics_host,
            shared_port=worker,
            proxy_headers=not arguments.no_proxy_headers,
            forwarded_allow_ips=arguments.forwarded_allow_ips,
            uds=uds,
            fd=fd,
            listen_fds=listen_fds,
            ssl_certfile=arguments.ssl_certfile,
            ssl_keyfile=arguments.ssl_keyfile,
            backlog=_backlog(arguments.backlog),
            limit_max_requests=arguments.limit_max_requests,
        )
        serve(app, config, on_ready, on_request_limit)
        code = 0
    except PercoreError as error:
        if arguments.log_level == "debug" and error.__cause__ is not None:
            _logging.logger.exception("details")
        _logging.write_error_line(f"runtime: error: {error}")
        code = 1
    if _threadpool.stranded():
        _exit_without_stranded_jobs(code)
    return code


def _exit_without_stranded_jobs(code: int) -> None:
    """Exits now: a ``to_thread`` job still runs past the shutdown deadline (``_threadpool.release`` warned).

    Why: the interpreter's exit joins the thread pool's threads (``concurrent.futures`` registers that with
    ``threading._register_atexit``), so the process would wait for the job for as long as it runs (uvicorn's
    does). The deadline is what the server promises; past it, exit without the job, as a --workers
    supervisor's kill does for a worker. The app's ``atexit`` functions still run (``logging.shutdown``,
    multiprocessing's children, exporters' buffers): only the join is skipped."""
    try:
        _logging.flush()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):  # None, closed or a broken pipe: nothing to save
                pass
    finally:  # whatever was raised on the way (a second Ctrl-C included): exit
        os._exit(code)


def _supervise(argv: list[str], arguments: argparse.Namespace) -> int:
    if arguments.workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {arguments.workers}")
    if arguments.uds is not None and arguments.fd is not None:
        raise ConfigurationError("--uds and --fd are exclusive: pick one")
    return _supervisor.Supervisor(
        argv,
        app=arguments.app,
        host=arguments.host,
        port=arguments.port,
        workers=arguments.workers,
        loops=arguments.loops,
        shutdown_timeout=arguments.shutdown_timeout,
        reload=arguments.reload,
        reload_dirs=arguments.reload_dir,
        metrics_port=arguments.metrics_port,
        uds=arguments.uds,
        fd=arguments.fd,
        secure=arguments.ssl_certfile is not None,
        backlog=_backlog(arguments.backlog),
        app_dir=arguments.app_dir,
    ).run()


def _backlog(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ConfigurationError(f"--backlog must be at least 1, got {value}")
    return None if value is None else min(value, 2**31 - 1)  # listen(2) takes an int; the kernel caps it


if __name__ == "__main__":
    sys.exit(main())
