"""asyncio semantics inside handlers (percore._loop and percore._asyncio_patch), end to end."""

from __future__ import annotations

import concurrent.futures

import pytest

APP = "tests.apps.runtime_app:api"


@pytest.fixture(params=["local", "round-robin"])
def server(serve, request):
    return serve(APP, "--loops", "2", "--routing", request.param)


def test_handlers_see_their_running_loop_and_a_current_task(server):
    assert server.get("/asyncio").json() == {
        "running": True,
        "same_loop": True,
        "loop_thread": True,
        "task": True,
        "same_task": True,
        "task_loop": True,
    }


def test_asyncio_timeout_cancels_and_uncancels_the_request_task(server):
    assert server.get("/timeout").json() == {"timed_out": True, "cancelling": 0}


def test_wait_for_times_out(server):
    assert server.get("/wait-for").json() == {"timed_out": True}


def test_task_groups_and_background_tasks_run_on_the_loop(server):
    assert server.get("/task-group").json() == {"results": [0, 10, 20]}
    assert server.get("/background").json() == {"done": True}


@pytest.mark.parametrize("path", ["/context", "/context-sync"])
def test_contextvars_never_leak_between_requests(server, path):
    client = server.client()
    for value in ["a", "b", "c"]:
        assert client.get(f"{path}/{value}").json() == {"before": None, "after": value}

    def one(value: int):
        return server.get(f"{path}/{value}").json()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(40)))
    assert results == [{"before": None, "after": str(value)} for value in range(40)]


def test_request_tasks_in_reference_cycles_are_collected(serve):
    # A timeout that escapes the handler leaves a cycle: traceback → Timeout → its task → the error.
    server = serve(APP, "--loops", "1")
    client = server.client()
    for _ in range(20):
        assert client.get("/timeout-500").status == 500
    assert client.get("/live-tasks").json()["tasks"] <= 2
