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
from typing import Literal

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


def run_cli(*args: str, path: tuple[Path, ...] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m percore ARGS` to completion, output captured; `path` goes before the repository on
    PYTHONPATH (apps written into a test's tmp_path). The timeout is generous: the machine is small and busy,
    and a command that hangs still fails the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, path), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "percore", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command failed with a single `runtime: error: ...` line on stderr naming every fragment."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runtime: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def leave_an_endless_stream(port: int, path: str = "/endless", chunks: int = 3) -> None:
    """GET `path`, a streamed response that never ends, read until `chunks` b"tick"s arrived, then hang up
    (the client leaves mid-stream; the server must stop producing)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        received = b""
        while received.count(b"tick") < chunks:
            chunk = raw.recv(4096)
            assert chunk, f"the stream ended after {received!r}"
            received += chunk
    finally:
        raw.close()


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
    """`python -m percore serve APP` in a subprocess, stopped with SIGTERM.

    Its stderr goes to a file, read at stop() (and by read_stderr() at any time); with stderr="pipe" it is a
    pipe that nobody reads while the server runs (a stalled log reader), read to its end by stop()."""

    def __init__(
        self,
        app: str,
        *args: str,
        port: int | None = None,
        server: str = "percore",
        stderr: Literal["file", "pipe"] = "file",
        uds: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.server = server
        self.stderr_to = stderr
        # A Unix socket path instead of the TCP port (--uds, the same flag in uvicorn).
        self.uds = uds
        listen = ["--uds", str(uds)] if uds is not None else ["--port", str(self.port)]
        if server == "percore":
            self.command = [sys.executable, "-m", "percore", "serve", app, *listen, *args]
        else:  # the reference server, for side-by-side comparisons
            self.command = [sys.executable, "-m", server, app, *listen, *args]
        self.process: subprocess.Popen | None = None
        self.stderr = ""

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # stderr to a file by default, not a pipe read only at the end: a server that logs more than a pipe
        # holds (~64 KiB of tracebacks) would block in its log call and stop answering.
        self._stderr_file = tempfile.TemporaryFile("w+") if self.stderr_to == "file" else None
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file or subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.stderr}")
            try:
                if self.uds is not None:
                    with socket.socket(socket.AF_UNIX) as probe:
                        probe.settimeout(0.2)
                        probe.connect(str(self.uds))
                        return self
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
            self.stderr = self._wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stderr = self._wait(None)
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM") from None
        return self.process.returncode

    def _wait(self, timeout: float | None) -> str:
        """Wait for the exit; returns all of stderr."""
        if self._stderr_file is None:  # a pipe: read while waiting, or a full one would hold up the exit
            return self.process.communicate(timeout=timeout)[1]
        self.process.wait(timeout=timeout)
        return self.read_stderr()

    def read_stderr(self) -> str:
        assert self._stderr_file is not None, "stderr is a pipe: it is read by stop()"
        self._stderr_file.seek(0)
        return self._stderr_file.read()


@pytest.fixture
def serve() -> Iterator:
    """serve(app, *cli_args) -> a started ServerProcess; all are stopped (and must exit 0) at teardown."""
    started: list[ServerProcess] = []

    def start(
        app: str,
        *args: str,
        server: str = "percore",
        stderr: Literal["file", "pipe"] = "file",
        uds: Path | None = None,
    ) -> ServerProcess:
        server = ServerProcess(app, *args, server=server, stderr=stderr, uds=uds).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None and server.process.returncode is None:
            code = server.stop()
            if server.server == "percore":
                assert code == 0, f"server exited with {code}:\n{server.stderr}"


def wait_until_started(server: ServerProcess, endpoint: str, count: int = 1, timeout: float = 10.0) -> None:
    """Until `count` handlers of `endpoint` have begun, per the test app's /started counters
    (tests/apps/runtime_app.py): a fixed sleep raced a loaded machine."""
    deadline = time.monotonic() + timeout
    while server.get("/started").json().get(endpoint, 0) < count:
        assert time.monotonic() < deadline, f"no {count} {endpoint} request(s) reached the handler"
        time.sleep(0.01)


def loops_answering(connection: http.client.HTTPConnection, requests: int = 4) -> set[int]:
    """The loops that answered `requests` GET /where (tests/apps/runtime_app.py) over one keep-alive
    connection of any kind (TCP, TLS, Unix socket); the connection is closed after."""
    loops = set()
    try:
        for _ in range(requests):
            connection.request("GET", "/where")
            loops.add(json.loads(connection.getresponse().read())["loop"])
    finally:
        connection.close()
    return loops
