"""SIGINT and SIGTERM stop the server however it was started. A process started in the background by a
non-interactive shell, by `nohup` or by some supervisors inherits SIGINT ignored, and Python then installs
no SIGINT handler of its own: the server installs handlers for both signals itself, as uvicorn does."""

from __future__ import annotations

import concurrent.futures
import signal
import sys

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
