"""The work behind `/cpu` and `/sleep`, imported by every benchmark app so each contender runs the same code.

`/cpu` is pure-Python arithmetic, ~1 ms on this machine's GIL CPython 3.13 (~1.4 ms on 3.13t): it measures
how a server runs Python that never yields. `/sleep` awaits `asyncio.sleep(0.01)`: it measures how many
waiting requests a server keeps in flight (concurrency), not how fast it runs Python.
"""

import asyncio

CPU_ITERATIONS = 20_000
SLEEP_SECONDS = 0.01


def burn(n: int = CPU_ITERATIONS) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_result() -> dict:
    return {"total": burn()}


async def sleep_result() -> dict:
    await asyncio.sleep(SLEEP_SECONDS)
    return {"slept": SLEEP_SECONDS}
