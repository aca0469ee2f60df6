"""The database work of `/queries?n=20` without any server: what a request costs at the least.

    PERCORE_DB_DSN=... taskset -c 1 python experiments/db_floor.py [--loop percore|asyncio] [--rounds 3]

64 coroutines each run the benchmark's `/queries` body (benches/apps/db.py: take a connection from the
pool of 8, 20 `SELECT`s, `json.dumps` of the rows) in a loop for `--duration` seconds, on percore's event
loop or asyncio's; printed: requests per second and the process's CPU time (user + system) per request.
No HTTP, no ASGI, no Starlette: a server's CPU-µs per request minus this floor is what the server (its
HTTP, its app framework and its loop's share) adds. Used for issue #13's 3.13t `/queries` target
against Granian (docs/benchmarks.md, "The 3.13t `/queries` target"): Granian's CPU-µs per request
divided by percore's floor is the ratio even a server that cost nothing would reach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import percore

from benches.apps.db import open_database

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "percore": percore.new_event_loop}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(database, duration: float, clients: int, queries: int) -> tuple[int, float, float]:
    """(requests, per second, CPU seconds per request), the requests still running at the deadline included."""
    done = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            json.dumps(await database.worlds(queries))
            done += 1

    start, cpu = time.monotonic(), cpu_seconds()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu
    if not done:
        raise RuntimeError("no request completed")
    return done, done / elapsed, cpu / done


async def main(args) -> list[tuple[int, float, float]]:
    database = await open_database()
    try:
        await measure(database, 1.0, args.clients, args.queries)  # warm-up
        results = []
        for _ in range(args.rounds):
            done, rps, cpu = await measure(database, args.duration, args.clients, args.queries)
            results.append((done, rps, cpu * 1e6))
        return results
    finally:
        await database.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=LOOPS, default="percore")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(main(args), loop_factory=LOOPS[args.loop])
    for done, rps, cpu in results:
        print(f"{args.loop}: {done} requests, {rps:8.1f} requests/s  {cpu:8.1f} CPU-us/request")
    print(
        f"{args.loop} median: {statistics.median(r for _, r, _ in results):.1f} requests/s, "
        f"{statistics.median(c for _, _, c in results):.1f} CPU-us/request"
    )
