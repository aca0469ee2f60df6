"""Background tasks: ``BackgroundTasks`` parameters and ``Response(background=...)`` run after the response,
on the request's loop, in order; a failing task is logged and the next one runs."""

import asyncio
import threading
import time

import percore
from percore import BackgroundTask, BackgroundTasks, Depends
from percore.testing import TestClient


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def make_app():
    api = percore.App()
    events: list = []
    release: dict = {}

    async def held(name: str):
        # Waits for GET /release: the response that queued it must not wait with it.
        release.setdefault("event", asyncio.Event())
        await release["event"].wait()
        events.append(name)

    def failing():
        raise RuntimeError("a failing background task")

    def queue_from_a_dependency(tasks: BackgroundTasks):
        tasks.add_task(events.append, "from the dependency")

    @api.get("/queue")
    def queue(tasks: BackgroundTasks, _=Depends(queue_from_a_dependency)):
        events.append(("handler", threading.get_ident()))
        tasks.add_task(failing)
        tasks.add_task(held, "held")
        tasks.add_task(lambda: events.append(("task", threading.get_ident())))
        return {"queued": len(tasks.tasks)}

    @api.get("/release")
    def release_tasks():
        release["event"].set()

    @api.get("/response")
    async def response():
        task = BackgroundTask(events.append, "response background")
        return percore.JSONResponse({"ok": True}, background=task)

    @api.get("/events")
    def read_events():
        return [list(e) if isinstance(e, tuple) else e for e in events]

    return api


def test_tasks_run_after_the_response_in_order_on_the_loop_and_a_failure_is_logged(caplog):
    api = make_app()
    with TestClient(api) as client:
        # The response arrives although its second task waits for a later request.
        assert client.get("/queue").json() == {"queued": 4}
        events = wait_for(lambda: len(client.get("/events").json()) >= 2 and client.get("/events").json())
        assert events[1] == "from the dependency"
        assert "held" not in events
        client.get("/release")
        events = wait_for(lambda: len(e := client.get("/events").json()) == 4 and e, what="the tasks")
        (_, handler_thread), first, held, (_, task_thread) = events
        assert (first, held) == ("from the dependency", "held")
        assert task_thread == handler_thread  # the request's loop thread
    assert "a failing background task" in caplog.text


def test_response_background_on_a_route_without_dependencies():
    api = make_app()
    assert api.routes[[r.path for r in api.routes].index("/response")].endpoint is None
    with TestClient(api) as client:
        assert client.get("/response").json() == {"ok": True}
        wait_for(lambda: client.get("/events").json() == ["response background"], what="the task")


def test_served_background_tasks(serve):
    server = serve("tests.test_background:served")
    client = server.client()
    try:
        assert client.get("/queue").json() == {"queued": 4}
        client.get("/release")
        events = wait_for(lambda: len(e := client.get("/events").json()) == 4 and e, what="the tasks")
        assert events[1:3] == ["from the dependency", "held"]
    finally:
        client.close()
    assert "a failing background task" in wait_for(server.read_stderr, what="the log")


served = make_app()
