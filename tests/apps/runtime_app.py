"""The app the end-to-end runtime tests serve."""

import asyncio
import collections
import contextvars
import os
import sys
import threading
import time
from pathlib import Path

import percore

api = percore.App()
request_id = contextvars.ContextVar("request_id", default=None)


def _where(request: percore.Request) -> dict:
    return {
        "loop": request.loop_index,
        # The OS thread's own name (Rust names the loop threads; Python calls them "Dummy-N").
        "thread": Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip(),
        "affinity": sorted(os.sched_getaffinity(0)),
    }


@api.get("/whoami")
def whoami(request: percore.Request):
    # Same shape as tests/apps/starlette_app.py's /whoami, so both compare with uvicorn's answers.
    # No client on a Unix socket (tests/test_sockets.py) unless a trusted proxy names one.
    host, port = request.client or (None, None)
    shown_port = "ephemeral" if host == "127.0.0.1" and port else port
    # As Starlette's url_for builds it: an HTTP route's URL is https when the scheme is secure.
    secure = request.scheme in ("https", "wss")
    url = f"{'https' if secure else 'http'}://{request.headers['host']}/whoami"
    return {"client": [host, shown_port], "scheme": request.scheme, "url": url}


@api.get("/addresses")
def addresses(request: percore.Request):
    # As tests/apps/starlette_app.py's /addresses reports the ASGI scope's.
    return {"client": request.client, "server": request.server}


@api.get("/where")
async def where(request: percore.Request):
    return _where(request)


@api.get("/where-sync")
def where_sync(request: percore.Request):
    return _where(request)


# How many handlers of each long-running endpoint have begun: tests wait on /started instead of sleeping
# and hoping the request has arrived (a fixed sleep raced a loaded CI machine).
started: collections.Counter[str] = collections.Counter()


@api.get("/slow")
async def slow(request: percore.Request):
    started["slow"] += 1
    await asyncio.sleep(0.6)
    return _where(request)


@api.get("/started")
def started_counts():
    return dict(started)


@api.get("/sleep")
async def sleep():
    start = time.monotonic()
    await asyncio.sleep(0.2)
    return {"slept": 0.2, "start": start, "end": time.monotonic()}


@api.get("/cpu")
def cpu(request: percore.Request):
    started_wall, started_cpu = time.perf_counter(), time.thread_time()
    total = 0
    for i in range(3_000_000):
        total += i * i
    return {
        "loop": request.loop_index,
        "start": started_wall,
        "end": time.perf_counter(),
        "cpu": time.thread_time() - started_cpu,
    }


@api.get("/boom")
async def boom():
    raise ValueError("kaboom from an async handler")


@api.get("/boom-sync")
def boom_sync():
    raise KeyError("kaboom from a sync handler")


@api.get("/boom-after-await")
async def boom_after_await():
    await asyncio.sleep(0.01)
    raise RuntimeError("kaboom after suspending")


@api.get("/not-serialisable")
async def not_serialisable():
    return {"when": object()}


@api.get("/context/{value}")
async def context(value: str):
    before = request_id.get()
    request_id.set(value)
    await asyncio.sleep(0.05)
    return {"before": before, "after": request_id.get()}


@api.get("/context-sync/{value}")
def context_sync(value: str):
    before = request_id.get()
    request_id.set(value)
    return {"before": before, "after": request_id.get()}


@api.get("/asyncio")
async def asyncio_facts():
    loop = asyncio.get_running_loop()
    task_before = asyncio.current_task()
    await asyncio.sleep(0)
    task_after = asyncio.current_task()
    return {
        "running": loop.is_running(),
        "same_loop": loop is asyncio.get_event_loop(),
        "loop_thread": loop._thread_id == threading.get_ident(),
        "task": task_before is not None,
        "same_task": task_before is task_after,
        "task_loop": task_before.get_loop() is loop,
        "percore_loop": isinstance(loop, percore.EventLoop),
    }


@api.get("/timeout")
async def timeout():
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
    except TimeoutError:
        timed_out = True
    else:
        timed_out = False
    # The task must still be usable after the timeout cancelled and uncancelled it.
    await asyncio.sleep(0.01)
    return {"timed_out": timed_out, "cancelling": asyncio.current_task().cancelling()}


@api.get("/wait-for")
async def wait_for():
    try:
        await asyncio.wait_for(asyncio.sleep(5), timeout=0.05)
    except TimeoutError:
        return {"timed_out": True}
    return {"timed_out": False}


@api.get("/task-group")
async def task_group():
    async def child(n: int) -> int:
        await asyncio.sleep(0.01 * n)
        return n * 10

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(child(n)) for n in range(3)]
    return {"results": [t.result() for t in tasks]}


@api.get("/background")
async def background():
    done = asyncio.Event()

    async def later():
        await asyncio.sleep(0.01)
        done.set()

    task = asyncio.create_task(later())
    await done.wait()
    await task
    return {"done": done.is_set()}


@api.get("/gil")
def gil():
    enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return {"gil_enabled": enabled}


@api.get("/echo/{name}")
async def echo(name: str, request: percore.Request):
    return {"name": name, "method": request.method, "query": request.query_string}


@api.post("/echo/{name}")
async def echo_post(name: str, request: percore.Request):
    return {"name": name, "body": request.body.decode(), "content_type": request.headers.get("content-type")}


@api.get("/timeout-500")
async def timeout_500():
    async with asyncio.timeout(0.01):
        await asyncio.sleep(1)


@api.get("/live-tasks")
def live_tasks():
    import gc

    gc.collect()
    return {"tasks": sum(type(o).__name__ == "RequestTask" for o in gc.get_objects())}


cancel_log: list[str] = []


@api.get("/cancellable")
async def cancellable():
    started["cancellable"] += 1
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        cancel_log.append("cancelled")
        raise
    return {"finished": True}


@api.get("/cancel-log")
async def read_cancel_log():
    return {"log": cancel_log}


@api.post("/upload")
def upload(request: percore.Request):
    return {"received": len(request.body)}
