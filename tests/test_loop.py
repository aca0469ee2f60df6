"""asyncio semantics inside handlers (percore._loop and percore._asyncio_patch), end to end."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest
from percore import App
from percore.exceptions import ConfigurationError
from percore.server import Server, ServerConfig

from tests.conftest import run_cli

APP = "tests.apps.runtime_app:api"


@pytest.fixture(
    params=[(routing, loop) for routing in ("local", "round-robin") for loop in ("percore", "asyncio")]
)
def server(serve, request):
    routing, loop = request.param
    server = serve(APP, "--loops", "2", "--routing", routing, "--loop", loop)
    server.loop = loop
    return server


def test_handlers_see_their_running_loop_and_a_current_task(server):
    assert server.get("/asyncio").json() == {
        "percore_loop": server.loop == "percore",
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


@pytest.mark.skipif(bool(os.environ.get("PERCORE_TEST_LOOP")), reason="PERCORE_TEST_LOOP chooses the loop")
def test_the_default_loop_is_percores_and_the_banner_says_which(serve):
    def banner(server) -> str:
        # The banner is logged once the loops accept, which is when serve() returns: wait for the line.
        deadline = time.monotonic() + 30
        while "loop(s) pinned" not in server.read_stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        return server.read_stderr()

    server = serve(APP, "--loops", "1")
    assert server.get("/asyncio").json()["percore_loop"] is True
    assert "| percore loop |" in banner(server)
    fallback = serve(APP, "--loops", "1", "--loop", "asyncio")
    assert fallback.get("/asyncio").json()["percore_loop"] is False
    assert "| asyncio loop |" in banner(fallback)


def test_an_unknown_loop_is_a_clear_error():
    result = run_cli("serve", APP, "--loop", "uvloop")
    assert result.returncode == 2
    assert "--loop" in result.stderr and "invalid choice: 'uvloop'" in result.stderr
    with pytest.raises(ConfigurationError, match="unknown event loop 'uvloop'"):
        Server(App(), ServerConfig(loop="uvloop"))
