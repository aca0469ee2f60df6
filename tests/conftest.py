"""Shared fixtures: a real `runtime serve` subprocess on a free port, and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
BUILD = "free-threaded" if FREE_THREADED else "gil"


def pytest_report_header(config) -> str:
    return f"percore tests on {sys.version.split()[0]} ({BUILD} build), executable {sys.executable}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> Response:
        self.connection.request(method, path, body=body, headers=headers or {})
        reply = self.connection.getresponse()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def close(self) -> None:
        self.connection.close()


class ServerProcess:
    """`python -m percore serve APP` in a subprocess, stopped with SIGTERM."""

    def __init__(self, app: str, *args: str, port: int | None = None, server: str = "percore") -> None:
        self.port = port or free_port()
        self.server = server
        if server == "percore":
            self.command = [sys.executable, "-m", "percore", "serve", app, "--port", str(self.port), *args]
        else:  # the reference server, for side-by-side comparisons
            self.command = [sys.executable, "-m", server, app, "--port", str(self.port), *args]
        self.process: subprocess.Popen | None = None
        self.stderr = ""

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # stderr to a file, not a pipe read only at the end: a server that logs more than a pipe holds
        # (~64 KiB of tracebacks) would block in its log call and stop answering.
        self._stderr_file = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr_file, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.stderr}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start listening:\n{self.stderr}")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.port, timeout)

    def get(self, path: str) -> Response:
        client = self.client()
        try:
            return client.get(path)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, collect stderr; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.stderr = self.read_stderr()
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM") from None
        self.stderr = self.read_stderr()
        return self.process.returncode

    def read_stderr(self) -> str:
        self._stderr_file.seek(0)
        return self._stderr_file.read()


@pytest.fixture
def serve() -> Iterator:
    """serve(app, *cli_args) -> a started ServerProcess; all are stopped (and must exit 0) at teardown."""
    started: list[ServerProcess] = []

    def start(app: str, *args: str, server: str = "percore") -> ServerProcess:
        server = ServerProcess(app, *args, server=server).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None and server.process.returncode is None:
            code = server.stop()
            if server.server == "percore":
                assert code == 0, f"server exited with {code}:\n{server.stderr}"
