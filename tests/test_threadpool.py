"""The shared thread pool behind ``asyncio.to_thread`` / ``run_in_executor(None, ...)`` on every loop
(percore/_threadpool.py), end to end over real sockets on this interpreter build."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest
from percore import _threadpool
from percore._runtime import cpu_budget

from .conftest import ServerProcess

APP = "tests.apps.threadpool_app:api"
DEADLINE = 30.0


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("path", ["/offload", "/offload-helper"])
def test_offloaded_cpu_work_leaves_its_loop_free(serve, path):
    """While an async handler's CPU-bound job runs in the pool, the same (only) loop answers other
    requests — one of them is what ends the job — and the job runs on every CPU of the process, not
    pinned to the core of the loop that started it."""
    server: ServerProcess = serve(APP, "--loops", "1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(lambda: server.client(timeout=DEADLINE + 10).get(path))
        wait_for(lambda: server.get("/spinning").json()["spinning"], "the job to start")
        assert server.get("/release").json() == {"released": True}
        reply = job.result(timeout=DEADLINE + 10)
    assert reply.status == 200, reply.text
    body = reply.json()
    assert body["released"], "the job ran out its deadline: /release was not answered while it ran"
    assert body["thread"].startswith("percore-pool")
    mask = sorted(os.sched_getaffinity(0))  # the server inherits the test process's mask
    assert body["affinity"] == mask
    if "loop_affinity" in body and len(mask) > 1:
        assert body["loop_affinity"] == [mask[0]], "the loop itself stays pinned"


def test_every_loop_shares_one_bounded_pool(serve):
    server = serve(APP, "--loops", "2", "--routing", "round-robin")
    seen: dict[int, dict] = {}
    for _ in range(200):  # fresh connections: whatever spreads them, both loops answer soon
        body = server.get("/executor").json()
        seen.setdefault(body["loop"], body)
        if len(seen) == 2:
            break
    assert set(seen) == {0, 1}
    first, second = seen[0], seen[1]
    assert first["id"] == second["id"], "each loop has its own executor"
    assert first["type"] == "ThreadPoolExecutor"
    cpus, _ = cpu_budget()  # same cgroup and mask as the server
    assert first["max_workers"] == min(32, cpus + 4)
    assert first["thread"].startswith("percore-pool") and second["thread"].startswith("percore-pool")


def test_the_last_server_to_stop_shuts_the_pool_down():
    """In-process: two servers share one pool; it outlives the first one's stop, not the second's, and a
    server started later gets a fresh one."""
    from percore.testing import TestClient

    from .apps.threadpool_app import api

    with TestClient(api) as first:
        pool = _threadpool.shared()
        with TestClient(api) as second:
            assert second.get("/executor").json()["id"] == id(pool)
        assert not pool._shutdown
        assert first.get("/executor").json()["id"] == id(pool)
    assert pool._shutdown
    with TestClient(api) as third:
        assert third.get("/executor").json()["id"] != id(pool)


def test_a_job_stuck_past_the_shutdown_deadline_does_not_hold_the_exit(tmp_path):
    """SIGTERM while a `to_thread` job runs on: the server stops within its --shutdown-timeout and the
    process exits without the job, after the app's `atexit` functions. The interpreter's exit joins the
    pool's threads, so it used to wait for the job for as long as it ran (here up to its own 60 s deadline)
    after logging "stopped"."""
    (tmp_path / "app_with_atexit.py").write_text(
        "import atexit, sys\n"
        "from tests.apps.threadpool_app import api\n"
        "atexit.register(lambda: print('the app atexit ran', file=sys.stderr, flush=True))\n"
    )
    server = ServerProcess("app_with_atexit:api", "--loops", "1", "--shutdown-timeout", "1", path=(tmp_path,))
    server.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(lambda: server.client(timeout=DEADLINE + 10).get("/offload"))
            wait_for(lambda: server.get("/spinning").json()["spinning"], "the job to start")
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=DEADLINE)
            stuck.exception(
                timeout=DEADLINE
            )  # cancelled at the deadline: an error reply or a dropped connection
    finally:
        server.stop()
    assert code == 0, server.stderr
    assert "thread pool: jobs still running" in server.stderr
    assert "INFO percore: stopped" in server.stderr
    assert "the app atexit ran" in server.stderr


@pytest.mark.parametrize(
    ("app", "path"),
    [(APP, "/thread-affinity"), ("tests.apps.threadpool_app:starlette_api", "/sync-affinity")],
    ids=["thread-started-by-a-handler", "starlette-def-endpoint-on-anyio"],
)
def test_threads_started_on_a_loop_run_on_every_cpu(serve, app, path):
    """A thread started on a loop thread (by the app, or anyio's worker threads behind Starlette's and
    FastAPI's `def` endpoints) is not pinned to that loop's core: it may run on every CPU of the process."""
    mask = sorted(os.sched_getaffinity(0))
    if len(mask) < 2:
        pytest.skip("one CPU: nothing to widen")
    server = serve(app, "--loops", "1")
    body = server.get(path).json()
    assert body["affinity"] == mask
    if "loop_affinity" in body:
        assert body["loop_affinity"] == [mask[0]], "the loop itself stays pinned"
