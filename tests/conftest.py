"""Shared fixtures: a real `runtime serve` subprocess on a free port, and a small HTTP client.

Two tiers, told apart by the `e2e` marker (registered in pyproject.toml) rather than by folder:

* **e2e**: the test starts a real process: `runtime serve` through `ServerProcess` or the `serve` fixture, the
  CLI through `run_cli`, or anything else through `subprocess`. The marker is applied at collection
  (`pytest_collection_modifyitems`) to every test whose code, fixtures or test-package helpers reach one of
  those, so nobody marks by hand; and `ServerProcess`/`run_cli` refuse to run in a test left unmarked, so
  the tier never lies.
* **fast**: everything else, in-process (pure logic, `percore.testing.TestClient`):
  `pytest -m "not e2e" tests` runs it in seconds; `pytest -m e2e tests` the other tier.
"""

from __future__ import annotations

import fcntl
import http.client
import inspect
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Servers run from ROOT: a hung one is sent SIGABRT (ServerProcess.stop) and must not leave a core file there.
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
BUILD = "free-threaded" if FREE_THREADED else "gil"


#: How long the helpers wait for a server to start (and supervised servers to stop): generous, the machine is
#: small and busy; a server that hangs still fails the test, only later.
DEADLINE = 60.0


def pytest_report_header(config) -> str:
    return f"percore tests on {sys.version.split()[0]} ({BUILD} build), executable {sys.executable}"


# --- the two tiers ------------------------------------------------------------------------------------------

#: Names whose use makes a test end-to-end: the helpers below that start `python -m percore`, and the
#: `subprocess` module (`subprocess.run`, `Popen`).
STARTS_A_PROCESS = frozenset({"ServerProcess", "run_cli", "Popen", "subprocess"})


def starts_a_process(function: Callable, seen: set[types.CodeType] | None = None) -> bool:
    """Whether `function`'s code (nested functions included) names a `STARTS_A_PROCESS` helper, directly or
    through a function or class of the tests package it names (followed transitively)."""
    seen = set() if seen is None else seen
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names: set[str] = set()
    codes = [code]
    while codes:
        current = codes.pop()
        names.update(current.co_names)
        codes.extend(constant for constant in current.co_consts if isinstance(constant, types.CodeType))
    if names & STARTS_A_PROCESS:
        return True
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    for name in names:
        value = namespace.get(name)
        if not (getattr(value, "__module__", None) or "").startswith("tests."):
            continue
        if inspect.isclass(value):
            if issubclass(value, ServerProcess) or any(
                starts_a_process(member, seen)
                for member in vars(value).values()
                if inspect.isfunction(member)
            ):
                return True
        elif inspect.isfunction(value) and starts_a_process(value, seen):
            return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("e2e") is not None:
            continue
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        functions = [function, *(d.func for defs in fixtures.values() for d in defs)]
        if any(starts_a_process(f) for f in functions):
            item.add_marker(pytest.mark.e2e)


_running: pytest.Item | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


def check_tier(what: str) -> None:
    """A test that starts a process must be in the e2e tier (the scan above missed a way to start one)."""
    if _running is not None and _running.get_closest_marker("e2e") is None:
        raise AssertionError(
            f"{_running.nodeid} starts {what} but is not marked e2e: start it through the conftest helpers "
            "from the test, its fixtures or a helper of the tests package, or mark it @pytest.mark.e2e"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(
    *args: str,
    path: tuple[Path, ...] = (),
    timeout: float = 120,
    env: dict[str, str] | None = None,
    stderr: int = subprocess.PIPE,
) -> subprocess.CompletedProcess:
    """`python -m percore ARGS` to completion, output captured; `path` goes before the repository on
    PYTHONPATH (apps written into a test's tmp_path), `env` adds variables, `stderr` (a file descriptor)
    replaces the captured stderr. The timeout is generous: the machine is small and busy, and a command that
    hangs still fails the test."""
    check_tier("`python -m percore`")
    environment = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([*map(str, path), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "percore", *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=stderr,
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


def native_stacks(pid: int, frames: int = 25) -> str:
    """The native stack of every thread of process `pid` (gdb, when installed), `frames` deep: what a server
    that hangs was doing, for the failure message (CI runs once; a hang seen there must explain itself)."""
    try:
        dump = subprocess.run(
            ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"(no native stacks: {err!r})"
    kept, depth = [], 0
    for line in dump.splitlines():
        if line.startswith("Thread "):
            kept.append(line)
            depth = 0
        elif line.startswith("#") and depth < frames:
            kept.append("  " + line[:240])
            depth += 1
    return "native stacks (gdb):\n" + "\n".join(kept)


class ServerProcess:
    """`python -m percore serve APP` (or a reference server) in a subprocess, stopped with SIGTERM: the one
    helper for every test that runs a server, the `--workers` supervisor included (tests/test_workers.py).

    Its stderr goes to a file, read at stop() and by read_stderr() at any time, also while it runs; with
    stderr="pipe" it is a pipe that nobody reads while the server runs (a stalled log reader), read to its end
    by stop(). `path`: directories put before the repository on PYTHONPATH (apps written into a test's
    tmp_path). `stop_timeout`: stop()'s default wait for the exit after SIGTERM. `python` runs the server
    and `prefix` goes before it (benches/soak.py: another build's python, pinned by `taskset -c 1`)."""

    def __init__(
        self,
        app: str,
        *args: str,
        port: int | None = None,
        server: str = "percore",
        stderr: Literal["file", "pipe"] = "file",
        uds: Path | None = None,
        path: tuple[Path, ...] = (),
        stop_timeout: float = 10.0,
        python: str = sys.executable,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.server = server
        self.stderr_to = stderr
        # A Unix socket path instead of the TCP port (--uds, the same flag in uvicorn).
        self.uds = uds
        self.path = path
        self.stop_timeout = stop_timeout
        listen = ["--uds", str(uds)] if uds is not None else ["--port", str(self.port)]
        if server == "percore":
            # PERCORE_TEST_LOOP=asyncio: run the servers of a test run on the --loop fallback (scripts/dev test
            # runs the end-to-end server suites once more that way).
            loop = os.environ.get("PERCORE_TEST_LOOP")
            if loop and "--loop" not in args:
                args = ("--loop", loop, *args)
            self.command = [*prefix, python, "-m", "percore", "serve", app, *listen, *args]
        else:  # the reference server, for side-by-side comparisons
            self.command = [*prefix, python, "-m", server, app, *listen, *args]
        self.process: subprocess.Popen | None = None
        self.stderr = ""

    def launch(self) -> ServerProcess:
        """Starts the process without waiting for it to listen."""
        check_tier(f"a server ({' '.join(self.command)})")
        pythonpath = [*map(str, self.path), str(ROOT), os.environ.get("PYTHONPATH", "")]
        # PYTHONFAULTHANDLER: a server stuck at stop() is sent SIGABRT, which then prints its threads' stacks.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), PYTHONFAULTHANDLER="1")
        # stderr to a file by default, not a pipe read only at the end: a server that logs more than a pipe
        # holds (~64 KiB of tracebacks) would block in its log call and stop answering. O_APPEND: the server
        # shares the file offset read_stderr() moves, and must not write over what it wrote before.
        self._stderr_file = tempfile.TemporaryFile("w+") if self.stderr_to == "file" else None
        if self._stderr_file is not None:
            flags = fcntl.fcntl(self._stderr_file.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(self._stderr_file.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file or subprocess.PIPE,
            text=True,
        )
        return self

    def start(self, timeout: float = DEADLINE) -> ServerProcess:
        """Launches the server and waits until it accepts connections (a RuntimeError with its stderr if it
        exits or does not listen within `timeout`)."""
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.stderr}")
            if self.accepts():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start listening:\n{self.stderr}")

    def accepts(self) -> bool:
        """Whether a connection to the server's port (or Unix socket) is accepted now."""
        try:
            if self.uds is not None:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(0.5)
                    probe.connect(str(self.uds))
                    return True
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.port, timeout)

    def get(self, path: str) -> Response:
        client = self.client()
        try:
            return client.get(path)
        finally:
            client.close()

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, wait (`stop_timeout` by default), collect stderr; returns the exit code."""
        assert self.process is not None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.stderr = self._wait(timeout)
        except subprocess.TimeoutExpired:
            native = native_stacks(self.process.pid)
            # PYTHONFAULTHANDLER (set at launch): SIGABRT prints every thread's Python stack to stderr.
            self.process.send_signal(signal.SIGABRT)
            try:
                self.stderr = self._wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.stderr = self._wait(None)
            raise AssertionError(
                f"server did not exit within {timeout}s of SIGTERM:\n{self.stderr}\n{native}"
            ) from None
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
    """serve(app, *cli_args, **ServerProcess options) -> a started ServerProcess; all are stopped (and must
    exit 0) at teardown."""
    started: list[ServerProcess] = []

    def start(
        app: str,
        *args: str,
        server: str = "percore",
        stderr: Literal["file", "pipe"] = "file",
        uds: Path | None = None,
        path: tuple[Path, ...] = (),
        stop_timeout: float = 10.0,
    ) -> ServerProcess:
        server = ServerProcess(
            app, *args, server=server, stderr=stderr, uds=uds, path=path, stop_timeout=stop_timeout
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.process is not None and server.process.returncode is None:
            code = server.stop()
            if server.server == "percore":
                assert code == 0, f"server exited with {code}:\n{server.stderr}"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of the real PostgreSQL the database tests use (benches/db/pg.sh: TechEmpower's `world` and
    `fortune` tables). Skipped without one; under CI, which always has one, a missing DSN fails instead."""
    dsn = os.environ.get("PERCORE_TEST_PG_DSN")
    if not dsn:
        message = (
            "no PostgreSQL: scripts/dev test starts one (benches/db/pg.sh) and exports PERCORE_TEST_PG_DSN; "
            "outside it, export the DSN that `benches/db/pg.sh start` prints"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI runs scripts/dev test, which always provides it
        pytest.skip(message)
    return dsn


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
