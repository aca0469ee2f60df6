"""SIGINT and SIGTERM stop the server however it was started. A process started in the background by a
non-interactive shell, by `nohup` or by some supervisors inherits SIGINT ignored, and Python then installs
no SIGINT handler of its own: the server installs handlers for both signals itself, as uvicorn does."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time

from percore.server import _StopSignals

from .conftest import ServerProcess, wait_until_started

APP = "tests.apps.runtime_app:api"

# Runs the server's command with SIGINT ignored; an ignored signal stays ignored across exec.
IGNORING_SIGINT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"


def started_ignoring_sigint(*args: str) -> ServerProcess:
    server = ServerProcess(APP, *args)
    server.command = [sys.executable, "-c", IGNORING_SIGINT, *server.command]
    return server.start()


def wait_for_exit(server: ServerProcess) -> int:
    try:
        return server.process.wait(timeout=20)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_sigint_stops_a_server_started_with_sigint_ignored_after_its_requests():
    server = started_ignoring_sigint("--loops", "2")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.get, "/slow")
        wait_until_started(server, "slow")
        server.process.send_signal(signal.SIGINT)
        code = wait_for_exit(server)
        reply = slow.result(timeout=20)
    assert (reply.status, code) == (200, 0), server.read_stderr()


def test_sigint_stops_workers_started_with_sigint_ignored():
    server = started_ignoring_sigint("--loops", "1", "--workers", "2")
    assert server.get("/where").status == 200
    server.process.send_signal(signal.SIGINT)
    assert wait_for_exit(server) == 0, server.read_stderr()


def test_a_signal_as_soon_as_the_port_opens_stops_the_server_cleanly():
    """The port accepts before the main thread has logged its banner: a stop signal then lands while the main
    thread is still starting up or logging, and must stop the server like any other (exit 0, "stopped")."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        server = ServerProcess(APP, "--loops", "2").launch()
        try:
            deadline = time.monotonic() + 30
            while not server.accepts():
                assert server.process.poll() is None and time.monotonic() < deadline, server.read_stderr()
                time.sleep(0.005)
            server.process.send_signal(signum)
        finally:
            code = wait_for_exit(server)  # killed after 20 s
        assert code == 0, server.read_stderr()
        assert "INFO percore: stopped" in server.read_stderr()


def test_the_stop_handler_never_raises_into_what_the_main_thread_was_doing():
    """A handler that raised (KeyboardInterrupt, Python's own SIGINT behaviour) would leave a lock taken in a
    `with` held when the signal lands just after the acquire; the main thread then blocked forever on its next
    log line. The handler records the signal instead; `serve` reads the record."""
    before = signal.getsignal(signal.SIGTERM)
    signals = _StopSignals()
    signals.install()
    try:
        lock = threading.Lock()
        escaped = None
        try:
            with SignalledWhileTaking(lock):
                pass
        except BaseException as error:  # whatever escapes is the failure
            escaped = error
        assert escaped is None
        assert not lock.locked()
        assert signals.received == signal.SIGTERM
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) == before  # put back


class SignalledWhileTaking:
    """A `with` target whose `__enter__` takes `lock` and then receives SIGTERM: the signal's Python handler
    runs before `__enter__` returns, i.e. after the lock is taken and before the `with` block is entered."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> SignalledWhileTaking:
        self.lock.acquire()
        os.kill(os.getpid(), signal.SIGTERM)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
