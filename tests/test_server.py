"""End-to-end: the loop pool behind `runtime serve`, over real sockets, on this interpreter build.

Parametrised over loops {1, 2} and routing {local, round-robin, least-loaded}; the whole file runs once
per interpreter build (scripts/dev test runs pytest on the GIL build and on 3.13t).
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import time

import pytest
from percore._runtime import available_cores

from .conftest import FREE_THREADED, wait_until_started

APP = "tests.apps.runtime_app:api"
POLICIES = ["local", "round-robin", "least-loaded"]
LOOPS = [1, 2]


def expected_core(loop_index: int) -> int:
    cores = available_cores()
    return cores[loop_index % len(cores)]


@pytest.mark.parametrize("routing", POLICIES)
@pytest.mark.parametrize("loops", LOOPS)
def test_handlers_run_on_their_pinned_loop_thread(serve, loops, routing):
    server = serve(APP, "--loops", str(loops), "--routing", routing)
    client = server.client()
    for path in ["/where", "/where-sync"] * 4:
        reply = client.get(path)
        assert reply.status == 200, reply.text
        where = reply.json()
        assert 0 <= where["loop"] < loops
        if path == "/where-sync":
            # A `def` handler runs on the sync pool (unpinned), for the loop that dispatched it.
            assert where["thread"].startswith("percore-sync-"), where
            continue
        assert where["thread"] == f"percore-loop-{where['loop']}"
        assert where["affinity"] == [expected_core(where["loop"])]


@pytest.mark.parametrize("loops", LOOPS)
def test_round_robin_reaches_every_loop(serve, loops):
    server = serve(APP, "--loops", str(loops), "--routing", "round-robin")
    client = server.client()
    seen = {client.get("/where").json()["loop"] for _ in range(4 * loops)}
    assert seen == set(range(loops))


def test_def_handlers_are_not_handed_to_another_loop(serve):
    """A `def` handler runs on the shared sync pool whichever loop calls it, so the policies keep it on the
    loop that read it (a hand-off would only add a hop): round-robin, which spreads one connection's
    `async def` requests over every loop (above), leaves its `def` requests on the connection's loop."""
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    client = server.client()
    seen = {client.get("/where-sync").json()["loop"] for _ in range(8)}
    assert len(seen) == 1, seen


def test_local_keeps_a_connection_on_the_loop_that_accepted_it(serve):
    server = serve(APP, "--loops", "2", "--routing", "local")
    client = server.client()
    seen = {client.get("/where").json()["loop"] for _ in range(10)}
    assert len(seen) == 1


def test_least_loaded_sends_new_requests_away_from_a_busy_loop(serve):
    server = serve(APP, "--loops", "2", "--routing", "least-loaded")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.get, "/slow")
        wait_until_started(server, "slow")
        client = server.client()
        fast_loops = {client.get("/where").json()["loop"] for _ in range(6)}
        slow_reply = slow.result(timeout=10)
    assert slow_reply.status == 200
    busy_loop = slow_reply.json()["loop"]
    assert fast_loops == {1 - busy_loop}


@pytest.mark.parametrize("routing", POLICIES)
def test_a_hundred_sleeping_requests_interleave_on_one_loop(serve, routing):
    server = serve(APP, "--loops", "1", "--routing", routing)
    server.get("/where")  # warm up: import paths, first connection

    def one(_):
        reply = server.get("/sleep")
        return reply.status, reply.json()

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        replies = list(pool.map(one, range(100)))
    assert [status for status, _ in replies] == [200] * 100
    # Interleaved, not serialised: many sleeps were in progress at one moment (the handlers' own stamps,
    # one clock for the process). Serially, at most one would be; no wall-clock bound, so a slow machine
    # cannot fail it.
    events = sorted(
        [(body["start"], 1) for _, body in replies] + [(body["end"], -1) for _, body in replies],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most >= 5, f"at most {most} of 100 sleeps were in progress at once"


def test_cpu_bound_requests_on_two_loops(serve):
    server = serve(APP, "--loops", "2", "--routing", "local")
    # `def` handlers run on the sync pool, whichever loop read them: two connections are enough.
    clients = [server.client(), server.client()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda client: client.get("/cpu"), clients))
    assert [r.status for r in replies] == [200, 200]
    first, second = (r.json() for r in replies)
    # The two handlers ran at the same time: their intervals overlap (`def` handlers run on the sync pool,
    # so this holds on both builds; a GIL build time-slices them). Whether the CPU work itself ran in
    # parallel is a performance property, measured by experiments/scaling.py, not asserted here.
    assert first["start"] < second["end"] and second["start"] < first["end"]


@pytest.mark.parametrize("loops", LOOPS)
def test_gil_stays_disabled_after_serving_on_free_threaded_builds(serve, loops):
    server = serve(APP, "--loops", str(loops), "--routing", "round-robin")
    client = server.client()
    for _ in range(20):
        client.get("/where")
        client.get("/sleep")
    assert client.get("/gil").json() == {"gil_enabled": not FREE_THREADED}


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/boom", "kaboom from an async handler"),
        ("/boom-sync", "kaboom from a sync handler"),
        ("/boom-after-await", "kaboom after suspending"),
        ("/not-serialisable", "Object of type object is not JSON serializable"),
    ],
)
def test_a_failing_handler_gives_500_and_the_loop_keeps_serving(serve, path, logged):
    server = serve(APP, "--loops", "1")
    client = server.client()
    reply = client.get(path)
    assert reply.status == 500
    assert reply.text == "Internal Server Error"
    assert client.get("/where").status == 200
    assert server.stop() == 0
    assert f"Exception in handler for GET {path}" in server.stderr
    assert logged in server.stderr
    if path != "/not-serialisable":
        assert "Traceback" in server.stderr


def test_unknown_path_is_404_and_wrong_method_405(serve):
    server = serve(APP, "--loops", "2")
    client = server.client()
    assert client.get("/no/such/path").status == 404
    reply = client.request("DELETE", "/where")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"


def test_path_params_query_and_body_reach_the_handler(serve):
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    client = server.client()
    for _ in range(2):
        assert client.get("/echo/ada?x=1&y=2").json() == {"name": "ada", "method": "GET", "query": "x=1&y=2"}
        reply = client.request(
            "POST", "/echo/bob", body=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )
        assert reply.json() == {"name": "bob", "body": '{"a": 1}', "content_type": "application/json"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_in_flight_requests_and_exits_zero(serve, signum):
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.get, "/slow")
        wait_until_started(server, "slow")
        started = time.monotonic()
        server.process.send_signal(signum)
        reply = slow.result(timeout=10)
        code = server.process.wait(timeout=10)
    assert reply.status == 200
    assert code == 0
    assert time.monotonic() - started < 5


def test_a_second_signal_forces_exit(serve):
    server = serve(APP, "--loops", "1", "--shutdown-timeout", "30")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(server.get, "/cancellable")  # sleeps 5 s: would hold a graceful stop
        wait_until_started(server, "cancellable")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert server.process.poll() is None, "the first signal waits for in-flight requests"
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=5)
        assert time.monotonic() - started < 2
        assert code == 128 + signal.SIGTERM
        assert "WARNING percore: second signal: exiting without waiting" in server.read_stderr()
        with pytest.raises(Exception):  # noqa: B017 - the connection just drops
            stuck.result(timeout=5)


def test_a_second_signal_exits_even_when_nobody_reads_stderr(serve):
    """The forced exit writes its warning only if stderr has room: a full pipe nobody reads (a stalled log
    reader) must not hold the exit the second signal asks for."""
    server = serve(APP, "--loops", "1", "--shutdown-timeout", "30", stderr="pipe")  # read only by stop()
    client = server.client()
    for _ in range(300):  # ~300 tracebacks: several times what a pipe buffers
        assert client.get("/boom").status == 500
    client.close()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(server.get, "/cancellable")  # sleeps 5 s: would hold a graceful stop
        wait_until_started(server, "cancellable")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 128 + signal.SIGTERM
        with pytest.raises(Exception):  # noqa: B017 - the connection just drops
            stuck.result(timeout=5)


def test_a_blocked_stderr_never_stalls_a_loop(serve):
    """Handler errors are logged from the loop thread; with stderr a pipe nobody reads (full after ~64 KiB
    of tracebacks) the loop must go on serving: lines are written by a thread of their own, dropped when
    its bounded queue is full."""
    server = serve(APP, "--loops", "1", stderr="pipe")  # the pipe is read only by stop()
    client = server.client()
    for _ in range(300):  # ~300 tracebacks: several times what a pipe buffers
        assert client.get("/boom").status == 500
    assert client.get("/where").status == 200
    client.close()
    assert server.stop(timeout=30) == 0, server.stderr
    assert "Exception in handler for GET /boom" in server.stderr
