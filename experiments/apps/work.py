"""Endpoints for the GIL vs no-GIL experiment: pure-Python CPU work, and a trivial JSON answer."""

import percore

api = percore.App(openapi_url=None)


def burn(n: int = 25_000) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


@api.get("/cpu")
def cpu():
    return {"total": burn()}


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}
