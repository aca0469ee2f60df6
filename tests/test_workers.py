"""`runtime serve --workers N` and `--reload`: a supervisor and its worker processes, over real sockets.

Every end-to-end test waits for a condition with a generous deadline (the machine is small and busy);
none asserts a duration.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from percore import _supervisor

from .conftest import DEADLINE, ROOT, Client, ServerProcess, assert_one_clear_line, free_port, run_cli
from .test_sockets import unix_json

WORKERS_APP = "tests.apps.workers_app:api"


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """True until ``pid`` has been reaped. Not "until it is a zombie": a killed process's leader thread shows
    as a zombie while its other threads still exit, and their shared file table (listeners included) is
    only closed by the last one."""
    return os.path.exists(f"/proc/{pid}")


def running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (an exited process nobody reaps stays a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def pid_of_a_fresh_connection(server: ServerProcess) -> int:
    client = Client(server.port, timeout=DEADLINE)
    try:
        response = client.get("/pid")
    finally:
        client.close()
    assert response.status == 200, response.body
    return response.json()["pid"]


def worker_pids(server: ServerProcess, count: int) -> set[int]:
    """Fresh connections until ``count`` distinct worker pids have answered (SO_REUSEPORT spreads new
    connections over every worker's listeners by a hash of their addresses)."""
    seen: set[int] = set()

    def more() -> bool:
        seen.add(pid_of_a_fresh_connection(server))
        return len(seen) >= count

    wait_for(more, f"{count} distinct worker pids")
    # A worker answers as soon as its loops accept, a moment before it reports to the supervisor; one
    # killed in that moment is a start-up failure. Tests that go on to kill one wait for the report.
    wait_for(
        lambda: "worker(s) serving on" in server.read_stderr(), "the supervisor to see every worker serving"
    )
    return seen


@pytest.fixture
def supervised(serve) -> Callable[..., ServerProcess]:
    """supervised(app, *cli_args, path=()) -> a started supervisor (conftest's `serve`: stopped at teardown,
    exit 0), given DEADLINE to stop: it waits for its workers to drain."""

    def start(app: str, *args: str, path: tuple[Path, ...] = ()) -> ServerProcess:
        return serve(app, *args, path=path, stop_timeout=DEADLINE)

    return start


# --- workers -------------------------------------------------------------------------------------------


def test_two_workers_both_answer_each_on_its_own_cpus(supervised):
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1")
    seen: dict[int, list[int]] = {}

    def answered() -> bool:
        client = Client(server.port, timeout=DEADLINE)
        try:
            body = client.get("/pid").json()
        finally:
            client.close()
        seen[body["pid"]] = body["affinity"]
        return len(seen) >= 2

    wait_for(answered, "two distinct worker pids over fresh connections")
    assert len(seen) == 2
    assert server.process.pid not in seen  # the supervisor itself serves nothing
    mask = sorted(os.sched_getaffinity(0))
    first, second = seen.values()
    assert set(first) <= set(mask) and set(second) <= set(mask)
    if len(mask) >= 2:  # one loop each: each worker pinned to its own CPU
        assert len(first) == len(second) == 1 and first != second
    assert server.stop() == 0


def metrics_text(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
    except OSError:
        return None
    return received.decode(errors="replace")


def test_each_worker_serves_its_metrics_on_its_own_port(supervised):
    metrics_port = free_port()
    while True:  # two consecutive free ports
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", metrics_port + 1))
                break
            except OSError:
                metrics_port = free_port()
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1", "--metrics-port", str(metrics_port))
    pids = worker_pids(server, 2)
    for port in (metrics_port, metrics_port + 1):
        text = wait_for(lambda port=port: metrics_text(port), f"metrics on port {port}")
        assert text.startswith("HTTP/1.1 200"), text[:200]
        assert "percore_loops 1\n" in text
    # Every request was counted by exactly one worker.
    total = 0
    for port in (metrics_port, metrics_port + 1):
        for line in metrics_text(port).splitlines():
            if line.startswith("percore_requests_total{") and 'status="2xx"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    assert total >= len(pids)
    assert server.stop() == 0


def test_lifespan_runs_on_every_loop_of_every_worker(supervised):
    server = supervised("tests.apps.workers_app:asgi", "--workers", "2", "--loops", "2")
    startups: dict[int, int] = {}

    def answered() -> bool:
        client = Client(server.port, timeout=DEADLINE)
        try:
            body = client.get("/").json()
        finally:
            client.close()
        assert body["startups"] <= 2, body  # once per loop, never more
        startups[body["pid"]] = body["startups"]
        return len(startups) >= 2 and all(count == 2 for count in startups.values())

    # A loop serves its listener's queue once its own lifespan has started; the other loop's may still run.
    wait_for(answered, "both workers to report a lifespan startup on each of their 2 loops")
    assert len(startups) == 2
    assert server.stop() == 0


def test_a_killed_worker_is_restarted_and_the_port_answers_throughout(supervised):
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1")
    pids = worker_pids(server, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), "the killed worker to be reaped")
    # From now on every request must be answered: by the survivor until the replacement serves.
    answered_by: set[int] = set()

    def replacement_answered() -> bool:
        answered_by.add(pid_of_a_fresh_connection(server))
        return bool(answered_by - pids)

    wait_for(replacement_answered, "a new worker pid")
    assert victim not in answered_by
    wait_for(lambda: "was killed by SIGKILL; restarting" in server.read_stderr(), "the restart to be logged")
    assert f"(pid {victim}) was killed by SIGKILL; restarting" in server.read_stderr()
    assert server.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_every_worker_and_exits_0(supervised, signum):
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1")
    pids = worker_pids(server, 2)
    server.process.send_signal(signum)
    server.process.wait(DEADLINE)
    assert server.stop() == 0, server.stderr
    assert f"{signum.name}: stopping 2 worker(s)" in server.stderr
    # The supervisor reaps its workers before it exits: they are gone, not orphaned.
    assert not any(alive(pid) for pid in pids), server.stderr
    assert "stopped" in server.stderr.splitlines()[-1]


def test_a_second_signal_kills_workers_that_are_still_draining(supervised, tmp_path):
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1", "--shutdown-timeout", "60")
    pids = worker_pids(server, 2)
    marker = tmp_path / "in-flight"

    def slow_request() -> None:
        client = Client(server.port, timeout=DEADLINE)
        try:
            client.get(f"/hold?marker={marker}&seconds=50")
        except OSError:
            pass  # cut when its worker is killed
        finally:
            client.close()

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    wait_for(marker.exists, "the slow request to run")
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: stopping" in server.read_stderr(), "the supervisor to start stopping")
    holder = int(wait_for(marker.read_text, "the holder's pid"))
    assert alive(holder)  # draining its in-flight request, for up to --shutdown-timeout
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(DEADLINE)
    assert server.process.returncode == 128 + signal.SIGTERM, server.read_stderr()
    assert "second signal: killing" in server.read_stderr()
    assert not any(alive(pid) for pid in pids)
    thread.join(DEADLINE)


def test_an_app_that_fails_to_import_exits_non_zero_with_its_message(tmp_path):
    (tmp_path / "refusing_app.py").write_text('raise RuntimeError("this app refuses to start")\n')
    result = run_cli(
        "serve", "refusing_app:api", "--workers", "2", "--port", str(free_port()), path=(tmp_path,)
    )
    assert result.returncode == 1, result.stderr
    assert "this app refuses to start" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("runtime: error: worker "), result.stderr
    assert "before serving" in result.stderr.splitlines()[-1]


def test_the_supervisor_and_its_workers_write_whole_lines_to_their_shared_stderr(tmp_path):
    """Each write(2) to the stderr the supervisor and its workers share is whole lines, so a process stopped
    between two writes (a worker SIGTERMed by its supervisor) never leaves half a line for the next line to
    run on into. A SOCK_SEQPACKET stderr keeps every write(2) a record of its own; PYTHONUNBUFFERED=1 makes
    print() write a line and its newline separately."""
    (tmp_path / "refusing_app.py").write_text('raise RuntimeError("this app refuses to start")\n')
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with reader:
        with writer:
            result = run_cli(
                *("serve", "refusing_app:api", "--workers", "2", "--port", str(free_port())),
                path=(tmp_path,),
                env={"PYTHONUNBUFFERED": "1"},
                stderr=writer.fileno(),
            )
        reader.settimeout(DEADLINE)  # every writer has exited: the records are there, then the end
        writes = list(iter(lambda: reader.recv(1 << 20).decode(), ""))
    assert result.returncode == 1, writes
    assert any("this app refuses to start" in write for write in writes), writes
    assert all(write.endswith("\n") for write in writes), writes
    assert writes[-1].startswith("runtime: error: worker ") and "before serving" in writes[-1], writes


def test_a_worker_that_keeps_failing_to_restart_makes_the_supervisor_give_up(supervised, tmp_path):
    app_file = tmp_path / "fragile_app.py"
    app_file.write_text("from tests.apps.workers_app import api\n")
    server = supervised("fragile_app:api", "--workers", "2", "--loops", "1", path=(tmp_path,))
    survivor, victim = sorted(worker_pids(server, 2))
    app_file.write_text('raise RuntimeError("broken since the last deploy")\n')
    os.kill(victim, signal.SIGKILL)
    # Restarted with a backoff, each attempt fails at import; after MAX_START_FAILURES the supervisor stops
    # the survivor and exits 1.
    wait_for(lambda: server.process.poll() is not None, "the supervisor to give up", timeout=3 * DEADLINE)
    log = server.read_stderr()
    assert server.process.returncode == 1, log
    assert log.count("broken since the last deploy") == _supervisor.MAX_START_FAILURES
    last = log.splitlines()[-1]
    assert last.startswith("runtime: error: worker ") and last.endswith(
        f"failed to start {_supervisor.MAX_START_FAILURES} times in a row (last: exited with 1); giving up"
    ), log
    assert not alive(survivor)


def test_workers_exit_when_the_supervisor_is_killed(supervised):
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1")
    pids = worker_pids(server, 2)
    server.process.kill()
    server.process.wait()
    # PR_SET_PDEATHSIG: each worker gets SIGTERM and stops; nothing is left holding the port.
    wait_for(lambda: not any(running(pid) for pid in pids), "the orphaned workers to exit")

    def port_is_free() -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", server.port))
            except OSError:
                return False
            return True

    wait_for(port_is_free, "the port to be free")


def test_a_port_taken_by_another_program_fails_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", WORKERS_APP, "--workers", "2", "--port", str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("runtime: error: ")]
    assert errors == [f"runtime: error: address 127.0.0.1:{port} is already in use"], result.stderr


def test_workers_and_a_single_process_server_never_share_a_port(supervised):
    """SO_REUSEPORT would let two servers of the same user split one port's traffic: both refuse."""
    single = ServerProcess(WORKERS_APP, "--loops", "1").start()
    try:
        result = run_cli("serve", WORKERS_APP, "--workers", "2", "--port", str(single.port))
        assert result.returncode == 1 and "already in use" in result.stderr, result.stderr
    finally:
        assert single.stop() == 0
    server = supervised(WORKERS_APP, "--workers", "2", "--loops", "1")
    worker_pids(server, 2)
    result = run_cli("serve", WORKERS_APP, "--loops", "1", "--port", str(server.port))
    assert result.returncode == 1 and f"127.0.0.1:{server.port} is already in use" in result.stderr


def test_zero_workers_is_a_clear_error():
    result = run_cli("serve", WORKERS_APP, "--workers", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == "runtime: error: --workers must be at least 1, got 0"


def test_the_flags_are_in_the_help():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--workers", "--reload", "--reload-dir"):
        assert flag in result.stdout
    assert "--supervised" not in result.stdout  # the supervisor's own flags stay hidden


# --- reload --------------------------------------------------------------------------------------------

VERSIONED_APP = """\
import percore
from reload_helper import SUFFIX

api = percore.App()


@api.get("/version")
async def version():
    return {{"version": "{version}" + SUFFIX}}
"""


def version_of(server: ServerProcess) -> str | None:
    try:
        client = Client(server.port, timeout=10)
        try:
            return client.get("/version").json()["version"]
        finally:
            client.close()
    except OSError:
        return None


def write(path: Path, text: str) -> None:
    # Through a temporary file and a rename, as editors do, so a poll never sees half a file.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_serves_edits_and_keeps_the_old_code_while_the_new_code_is_broken(
    supervised, tmp_path, workers
):
    app_dir, helper_dir = tmp_path / "app", tmp_path / "lib"
    app_dir.mkdir()
    helper_dir.mkdir()
    app_file = app_dir / "reloaded_app.py"
    write(app_file, VERSIONED_APP.format(version="one"))
    write(helper_dir / "reload_helper.py", 'SUFFIX = ""\n')
    server = supervised(
        "reloaded_app:api",
        "--reload",
        "--reload-dir",
        str(helper_dir),
        "--workers",
        str(workers),
        "--loops",
        "1",
        path=(app_dir, helper_dir),
    )
    assert version_of(server) == "one"

    write(app_file, VERSIONED_APP.format(version="two"))
    wait_for(lambda: version_of(server) == "two", "the edit to be served")
    # The new workers serve and the old ones are gone (until then the old code may still answer).
    wait_for(lambda: server.read_stderr().count("replaced worker") >= workers, "the old workers to stop")

    # Broken code: the new worker fails to import, the old one keeps serving the last good code.
    write(app_file, "import percore\napi = percore.App(\n")
    wait_for(
        lambda: "before the new workers took over; the previous code keeps serving" in server.read_stderr(),
        "the failed reload",
    )
    assert "SyntaxError" in server.read_stderr()
    for _ in range(5):
        assert version_of(server) == "two"

    # Fixed: served again. A change in a --reload-dir counts too.
    write(app_file, VERSIONED_APP.format(version="three"))
    wait_for(lambda: version_of(server) == "three", "the fixed code to be served")
    write(helper_dir / "reload_helper.py", 'SUFFIX = "+helper"\n')
    wait_for(lambda: version_of(server) == "three+helper", "the --reload-dir edit to be served")
    assert server.stop() == 0


def test_reload_waits_for_a_fix_when_the_app_is_broken_from_the_start(supervised, tmp_path):
    app_file = tmp_path / "late_app.py"
    write(app_file, 'raise RuntimeError("not yet")\n')
    write(tmp_path / "reload_helper.py", 'SUFFIX = ""\n')
    server = ServerProcess(
        "late_app:api", "--reload", "--loops", "1", path=(tmp_path,), stop_timeout=DEADLINE
    )
    server.launch()
    try:
        wait_for(lambda: "waiting for a source change" in server.read_stderr(), "the failed first start")
        assert server.process.poll() is None, "--reload must not exit on broken code"
        assert "not yet" in server.read_stderr()
        write(app_file, VERSIONED_APP.format(version="fixed"))
        wait_for(lambda: version_of(server) == "fixed", "the fixed app to be served")
    finally:
        assert server.stop() == 0, server.read_stderr()


# --- in-process: how CPUs are sliced, how sources are found and watched --------------------------------


@pytest.mark.parametrize(
    ("cpus", "workers", "loops", "expected"),
    [
        ([0, 1], 2, "auto", [[0], [1]]),
        ([0, 1, 2, 3, 4, 5, 6, 7], 2, "auto", [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ([0, 1, 2, 3, 4, 5, 6, 7], 3, "auto", [[0, 1], [2, 3, 4], [5, 6, 7]]),
        ([0, 1], 3, "auto", [[0], [1], [0]]),
        ([2, 5], 1, "auto", [[2, 5]]),
        ([0, 1, 2, 3], 2, "1", [[0], [1]]),
        ([0, 1, 2, 3], 2, "2", [[0, 1], [2, 3]]),
        ([0, 1], 2, "2", [[0, 1], [0, 1]]),
        ([0, 1, 2, 3], 2, "3", [[0, 1, 2], [0, 1, 3]]),
        ([0, 1], 2, "zero", [[0, 1], [0, 1]]),  # the workers report the bad --loops themselves
    ],
)
def test_cpu_slices(cpus, workers, loops, expected):
    assert _supervisor.cpu_slices(cpus, workers, loops) == expected


def test_backoff_grows_and_is_capped():
    delays = [_supervisor.backoff(n) for n in range(1, 10)]
    assert delays[0] == 0
    assert delays == sorted(delays)
    assert max(delays) == _supervisor.MAX_BACKOFF_SECONDS


def test_the_app_source_dir_is_found_without_importing_the_app(tmp_path, monkeypatch):
    package = tmp_path / "shop"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "main.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.chdir(tmp_path)
    assert _supervisor.app_source_dir("shop.api.main:app") == package / "api"
    assert _supervisor.app_source_dir("shop:app") == package
    assert _supervisor.app_source_dir("tests.apps.workers_app:api") == ROOT / "tests" / "apps"
    assert _supervisor.app_source_dir("no_such_module:app") == tmp_path


def test_the_source_watcher_sees_edits_new_and_deleted_files_but_not_caches(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    watcher = _supervisor.SourceWatcher([tmp_path])
    assert watcher.changes() == []
    (tmp_path / "a.py").write_text("x = 22\n")
    (tmp_path / "b.py").write_text("")
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / "__pycache__" / "c.py").write_text("")
    assert watcher.changes() == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    (tmp_path / "b.py").unlink()
    assert watcher.changes() == [str(tmp_path / "b.py")]
    assert watcher.changes() == []


def test_limit_max_requests_stops_a_single_server_after_that_many_responses():
    server = ServerProcess(WORKERS_APP, "--loops", "2", "--limit-max-requests", "5").start()
    for _ in range(5):
        assert server.get("/pid").status == 200
    # It stops by itself (graceful, exit 0) once the count is reached.
    assert server.process.wait(timeout=20) == 0
    server.stop()
    assert "served 5 responses (--limit-max-requests 5): stopping" in server.stderr


def test_a_stop_signal_that_comes_with_the_last_allowed_response_stops_for_the_signal():
    """A signal received while the main thread waited on the loops is acted on first: the server stops for
    the signal, not for the request limit reached in the same wait (a --workers worker would otherwise ask
    its stopping supervisor for a replacement)."""
    server = ServerProcess(WORKERS_APP, "--loops", "1", "--limit-max-requests", "1").start()
    try:
        assert server.get("/sigterm-self").status == 200
        assert server.process.wait(timeout=20) == 0
    finally:
        server.stop()
    assert "stopping: finishing in-flight requests" in server.stderr
    assert "--limit-max-requests" not in server.stderr


@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_limit_max_requests_recycles_workers_without_losing_a_connection(tmp_path, transport):
    # The supervisor holds the listening sockets (TCP: one per loop of each worker; --uds: the one socket)
    # and a replacement accepts on the same ones, so a worker that stops takes no queued connection with it.
    path = Path(f"/tmp/percore-recycle-{os.getpid()}.sock")
    server = ServerProcess(
        WORKERS_APP,
        "--workers",
        "2",
        "--loops",
        "1",
        "--limit-max-requests",
        "5",
        uds=path if transport == "uds" else None,
        stop_timeout=DEADLINE,
    )
    server.launch()

    def pid() -> int:
        if transport == "uds":
            return unix_json(path, "/pid")["pid"]
        return pid_of_a_fresh_connection(server)

    try:
        deadline = time.monotonic() + 60
        while True:  # until it serves
            try:
                pids = [pid()]
                break
            except (ConnectionRefusedError, FileNotFoundError):
                assert time.monotonic() < deadline, "never served"
                time.sleep(0.05)
        # Clients on fresh connections, concurrently so that connections sit in the accept queues when
        # workers stop; every one must be answered while at least four replacements take over.
        failures: list[BaseException] = []
        lock = threading.Lock()

        def client() -> None:
            while len(set(pids)) < 2 + 4 and not failures and time.monotonic() < deadline:
                try:
                    answered = pid()
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        failures.append(error)
                    return
                with lock:
                    pids.append(answered)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, f"{len(failures)} connection(s) lost: {failures[:3]}"
        assert len(set(pids)) >= 2 + 4, pids
    finally:
        code = server.stop(timeout=30)
    log = server.read_stderr()
    assert code == 0, log
    assert log.count("reached --limit-max-requests: starting its replacement") >= 4
    assert "serving in place of the recycled one" in log
    assert not path.exists()
    assert_one_clear_line(
        run_cli("serve", WORKERS_APP, "--limit-max-requests", "0"), "--limit-max-requests", "at least 1"
    )
