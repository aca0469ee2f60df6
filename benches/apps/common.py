"""The work behind `/cpu` and `/sleep`, imported by every benchmark app so each contender runs the same code.

`/cpu` is pure-Python arithmetic, ~1 ms on this machine's GIL CPython 3.13 (~1.4 ms on 3.13t): it measures
how a server runs Python that never yields. `/sleep` awaits `asyncio.sleep(0.01)`: it measures how many
waiting requests a server keeps in flight (concurrency), not how fast it runs Python.
"""

import asyncio
import os
import tempfile
from pathlib import Path

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


#: `GET /static/64k.bin`: a 64 KiB file every app serves through its StaticFiles (issue 16: percore's,
#: served from Rust, against Starlette's).
STATIC_FILE = "64k.bin"
STATIC_BYTES = bytes(range(256)) * 256


def static_directory() -> str:
    """A directory holding STATIC_FILE, written (atomically) when missing or different."""
    directory = Path(tempfile.gettempdir()) / "percore-bench-static"
    directory.mkdir(exist_ok=True)
    path = directory / STATIC_FILE
    if not path.exists() or path.read_bytes() != STATIC_BYTES:
        partial = directory / f".{STATIC_FILE}.{os.getpid()}"
        partial.write_bytes(STATIC_BYTES)
        partial.replace(path)
    return str(directory)
