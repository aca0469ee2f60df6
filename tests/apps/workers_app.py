"""The app the --workers tests serve: it says which process answered."""

import asyncio
import os

import percore

api = percore.App()


@api.get("/pid")
async def pid():
    return {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0))}


@api.get("/hold")
async def hold(marker: str, seconds: float):
    """Writes ``marker`` once the request runs (so a test knows it is in flight), then sleeps."""
    with open(marker, "w") as file:
        file.write(str(os.getpid()))
    await asyncio.sleep(seconds)
    return {"pid": os.getpid()}
