"""Where the server listens (runtime/src/listener.rs, docs/sockets.md), over real sockets: a Unix domain
socket (`--uds`, as behind nginx on the same host) and an inherited socket (`--fd`, as from systemd), for
native and ASGI apps, single-process and `--workers`; the app sees what it sees under uvicorn."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, assert_one_clear_line, loops_answering, run_cli

STARLETTE = "tests.apps.starlette_app:app"
NATIVE = "tests.apps.runtime_app:api"
WORKERS = "tests.apps.workers_app:api"


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix domain socket."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def unix_get(path: Path, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = UnixConnection(path)
    try:
        connection.request("GET", target, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def unix_json(path: Path, target: str, headers: dict[str, str] | None = None):
    status, body = unix_get(path, target, headers)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short directory: a Unix socket path is limited to 107 bytes, and pytest's tmp_path can be longer.
    directory = Path(f"/tmp/percore-{os.getpid()}-{time.monotonic_ns()}")
    directory.mkdir()
    yield directory
    for leftover in directory.iterdir():
        leftover.unlink()
    directory.rmdir()


@pytest.mark.parametrize("app", [STARLETTE, NATIVE], ids=["asgi", "native"])
def test_a_unix_socket_serves_the_app_as_uvicorn_does(serve, socket_dir, app):
    path = socket_dir / "percore.sock"
    server = serve(app, "--loops", "2", "--routing", "round-robin", uds=path)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666  # a proxy running as another user can connect
    seen = unix_json(path, "/addresses")
    # No peer address on a Unix socket; the server is the socket's path, as uvicorn reports them.
    assert seen == {"client": None, "server": [str(path), None]}
    uvicorn_path = socket_dir / "uvicorn.sock"
    serve(STARLETTE, "--log-level", "warning", server="uvicorn", uds=uvicorn_path)
    assert unix_json(uvicorn_path, "/addresses") == {"client": None, "server": [str(uvicorn_path), None]}
    # Both loops accept on the one socket and the routing policy spreads the requests over them.
    if app == NATIVE:
        assert loops_answering(UnixConnection(path)) == {0, 1}
    server.stop()
    assert not path.exists(), "the socket file outlived the server"


@pytest.mark.parametrize("app", [STARLETTE, NATIVE], ids=["asgi", "native"])
def test_proxy_headers_over_a_unix_socket_need_trust_in_everyone_as_under_uvicorn(serve, socket_dir, app):
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Host": "example.test"}
    default = serve(app, uds=socket_dir / "default.sock")
    everyone = serve(app, "--forwarded-allow-ips", "*", uds=socket_dir / "everyone.sock")
    uvicorn_default = serve(STARLETTE, server="uvicorn", uds=socket_dir / "uvicorn-default.sock")
    uvicorn_everyone = serve(
        STARLETTE, "--forwarded-allow-ips", "*", server="uvicorn", uds=socket_dir / "uvicorn-everyone.sock"
    )
    # A peer without an address is not 127.0.0.1: the default trust list does not cover it.
    assert unix_json(default.uds, "/whoami", forwarded) == unix_json(
        uvicorn_default.uds, "/whoami", forwarded
    )
    assert unix_json(default.uds, "/whoami", forwarded)["client"] == [None, None]
    assert unix_json(everyone.uds, "/whoami", forwarded) == unix_json(
        uvicorn_everyone.uds, "/whoami", forwarded
    )
    assert unix_json(everyone.uds, "/whoami", forwarded) == {
        "client": ["203.0.113.7", 0],
        "scheme": "https",
        "url": "https://example.test/whoami",
    }


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_refused(serve, socket_dir):
    path = socket_dir / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a crashed server's leftover: the file exists, nothing accepts
    stale.close()
    server = serve(NATIVE, "--loops", "1", uds=path)
    assert unix_get(path, "/where")[0] == 200
    # A second server on the same path must not take it over from the one serving there.
    result = run_cli("serve", NATIVE, "--uds", str(path))
    assert_one_clear_line(result, str(path), "already in use")
    assert unix_get(path, "/where")[0] == 200
    server.stop()
    assert not path.exists()


def test_a_path_that_is_not_a_socket_is_refused_and_kept(socket_dir):
    path = socket_dir / "notes.txt"
    path.write_text("keep me")
    result = run_cli("serve", NATIVE, "--uds", str(path))
    assert_one_clear_line(result, str(path), "not a socket")
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--uds", "/tmp/x.sock", "--fd", "3"), ("--uds", "--fd", "exclusive")),
        (("--fd", "987"), ("--fd 987", "not an open file descriptor")),
        (("--uds", "/nonexistent-dir/app.sock"), ("/nonexistent-dir/app.sock", "cannot listen")),
    ],
)
def test_bad_socket_options_fail_with_one_clear_line(args, fragments):
    assert_one_clear_line(run_cli("serve", NATIVE, *args), *fragments)


def start_with_inherited(listener: socket.socket, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "percore", "serve", NATIVE, "--fd", str(listener.fileno()), *args],
        cwd=ROOT,
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_answer(get, process: subprocess.Popen, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            return get()
        except OSError:
            assert time.monotonic() < deadline, "the server never answered on the inherited socket"
            time.sleep(0.05)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_an_inherited_socket_is_served(socket_dir, family):
    if family == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def get():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/addresses")
            return json.loads(connection.getresponse().read())

        expected_server = ["127.0.0.1", port]
    else:
        path = socket_dir / "inherited.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen()

        def get():
            return unix_json(path, "/addresses")

        expected_server = [str(path), None]
    with listener:
        process = start_with_inherited(listener, "--loops", "2")
        try:
            seen = wait_for_answer(get, process)
            assert seen["server"] == expected_server
            assert (seen["client"] is None) == (family == "unix")
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr
    if family == "unix":
        assert path.exists(), "a socket the server did not create is not its to remove"


def test_workers_share_one_unix_socket_and_the_supervisor_removes_it(socket_dir):
    path = socket_dir / "workers.sock"
    marker = socket_dir / "blocked"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "percore",
            "serve",
            WORKERS,
            "--uds",
            str(path),
            "--workers",
            "2",
            "--loops",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = wait_for_answer(lambda: unix_json(path, "/pid"), supervisor, timeout=60)["pid"]
        assert first != supervisor.pid
        # Block one worker's only loop; the next connection can then only be accepted by the other worker.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(unix_json, path, f"/block?marker={marker}&seconds=3")
            deadline = time.monotonic() + 30
            while not (marker.exists() and marker.read_text()):
                assert time.monotonic() < deadline, "the /block request never ran"
                time.sleep(0.01)
            blocked_pid = int(marker.read_text())
            other = wait_for_answer(lambda: unix_json(path, "/pid"), supervisor, timeout=60)["pid"]
            assert other not in (blocked_pid, supervisor.pid)
            assert blocked.result(timeout=30)["pid"] == blocked_pid
    finally:
        supervisor.terminate()
        _, stderr = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, stderr
    assert f"unix:{path}" in stderr
    assert not path.exists(), "the socket file outlived the supervisor"


@pytest.mark.parametrize("backlog", [None, "1"])
def test_backlog_bounds_the_connections_the_kernel_queues(serve, socket_dir, backlog):
    marker = socket_dir / "blocked"
    server = serve(WORKERS, "--loops", "1", *(("--backlog", backlog) if backlog else ()))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The only loop blocks in a handler: nothing is accepted, new connections wait in the kernel's queue.
        blocked = pool.submit(server.get, f"/block?marker={marker}&seconds=4")
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline, "the /block request never ran"
            time.sleep(0.01)
        queued = []
        try:
            for _ in range(6):
                try:
                    queued.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
                except TimeoutError:  # the queue is full: the kernel drops the handshake
                    pass
            if backlog is None:
                assert len(queued) == 6
            else:
                # Linux queues backlog + 1 connections.
                assert len(queued) <= 3, len(queued)
        finally:
            for connection in queued:
                connection.close()
        assert blocked.result(timeout=30).status == 200


def test_app_dir_is_searched_for_the_module_first(serve, tmp_path):
    app_dir = tmp_path / "service"
    app_dir.mkdir()
    (app_dir / "service_app.py").write_text(
        "import percore\napi = percore.App()\n\n\n@api.get('/hello')\ndef hello():\n    return {'from': 'app-dir'}\n"
    )
    server = serve("service_app:api", "--loops", "1", "--app-dir", str(app_dir))
    assert server.get("/hello").json() == {"from": "app-dir"}
    assert_one_clear_line(
        run_cli("serve", "service_app:api", "--app-dir", str(tmp_path / "nowhere")), "--app-dir"
    )
    assert_one_clear_line(run_cli("serve", NATIVE, "--backlog", "0"), "--backlog", "at least 1")
