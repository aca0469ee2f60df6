"""The app tests/test_threadpool.py serves: async handlers that hand work to the shared thread pool."""

import asyncio
import os
import threading
import time

import percore

api = percore.App()
# Set by /release; the offloaded job spins (pure-Python CPU work) until then, so the test decides how long
# it runs instead of guessing a duration.
released = threading.Event()
spinning = threading.Event()


def spin_until_released() -> dict:
    spinning.set()
    deadline = time.monotonic() + 60  # a test that never releases still ends
    rounds = 0
    while not released.is_set() and time.monotonic() < deadline:
        rounds += 1
    return {
        "released": released.is_set(),
        "thread": threading.current_thread().name,
        "affinity": sorted(os.sched_getaffinity(0)),
    }


@api.get("/offload")
async def offload(request: percore.Request):
    job = await asyncio.to_thread(spin_until_released)
    return {**job, "loop": request.loop_index, "loop_affinity": sorted(os.sched_getaffinity(0))}


@api.get("/offload-helper")
async def offload_helper(request: percore.Request):
    job = await percore.run_in_threadpool(spin_until_released)
    return {**job, "loop": request.loop_index}


@api.get("/spinning")
def is_spinning():
    return {"spinning": spinning.is_set()}


@api.get("/release")
def release():
    released.set()
    return {"released": True}


@api.get("/executor")
async def executor(request: percore.Request):
    loop = asyncio.get_running_loop()
    thread = await loop.run_in_executor(None, lambda: threading.current_thread().name)
    pool = loop._default_executor  # what run_in_executor(None) and asyncio.to_thread use
    return {
        "loop": request.loop_index,
        "id": id(pool),
        "type": type(pool).__name__,
        "max_workers": pool._max_workers,
        "thread": thread,
    }


@api.get("/noop")
async def noop():
    return {"ok": True}


def _nothing() -> None:
    return None


@api.get("/noop-offloaded")
async def noop_offloaded():
    await asyncio.to_thread(_nothing)
    return {"ok": True}


@api.get("/thread-affinity")
async def thread_affinity():
    """The CPUs of a plain thread the handler starts on its (pinned) loop thread."""
    seen: dict = {}
    thread = threading.Thread(target=lambda: seen.update(affinity=sorted(os.sched_getaffinity(0))))
    thread.start()
    thread.join()
    return {**seen, "loop_affinity": sorted(os.sched_getaffinity(0))}


def _starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def sync_endpoint(request):  # Starlette runs a `def` endpoint on anyio's worker threads
        return JSONResponse(
            {"affinity": sorted(os.sched_getaffinity(0)), "thread": threading.current_thread().name}
        )

    return Starlette(routes=[Route("/sync-affinity", sync_endpoint)])


starlette_api = _starlette_app()
