"""Endpoints for the experiments: the benchmark suite's `/json`, `/cpu` and `/sleep` (the same code,
benches/apps/common.py), and `/work?ms=N` for the routing experiment.

`/work?ms=N` keeps its loop busy in pure Python for N milliseconds (a spin on `perf_counter`, no await):
a request that costs N ms of the loop it runs on, whatever the machine's speed, so that a mix of cheap and
expensive requests has a known cost ratio.
"""

import time

import percore

from benches.apps.common import cpu_result, sleep_result

api = percore.App(openapi_url=None)


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}


@api.get("/cpu")
async def cpu():
    return cpu_result()


@api.get("/sleep")
async def sleep():
    return await sleep_result()


@api.get("/work")
async def work(ms: float = 1.0):
    end = time.perf_counter() + ms / 1000
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return {"ms": ms, "spins": spins}
