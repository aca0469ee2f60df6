"""Endpoints for the experiments: the benchmark suite's `/json`, `/cpu` and `/sleep` (the same code,
benches/apps/common.py), `/json` as a `def` handler (`/json-sync` on the sync pool, `/json-inline` on the
loop), and `/work?ms=N` for the routing experiment.

`/work?ms=N` keeps its loop busy in pure Python for N milliseconds (a spin on `perf_counter`, no await):
a request that costs N ms of the loop it runs on, whatever the machine's speed, so that a mix of cheap and
expensive requests has a known cost ratio. `/work-sync?ms=N` is the same work in a `def` handler, which
runs on the sync pool's threads instead of the loop.
"""

import time

import percore

from benches.apps.common import cpu_result, sleep_result

api = percore.App(openapi_url=None)


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}


@api.get("/json-sync")
def json_sync():
    """`/json` as a `def` handler: on the sync pool (docs/benchmarks.md, "Sync handlers")."""
    return {"message": "Hello, World!"}


@api.get("/json-inline", inline=True)
def json_inline():
    """`/json` as a `def` handler run on the loop thread."""
    return {"message": "Hello, World!"}


@api.get("/cpu")
async def cpu():
    return cpu_result()


@api.get("/sleep")
async def sleep():
    return await sleep_result()


def _spin(ms: float) -> dict:
    end = time.perf_counter() + ms / 1000
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return {"ms": ms, "spins": spins}


@api.get("/work")
async def work(ms: float = 1.0):
    return _spin(ms)


@api.get("/work-sync")
def work_sync(ms: float = 1.0):
    return _spin(ms)
