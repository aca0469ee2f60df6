"""The benchmark endpoints as a percore native app (every contender implements the same work)."""

import percore

from benches.apps.common import cpu_result, sleep_result

api = percore.App()


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}


@api.get("/plaintext")
async def plaintext():
    return "Hello, World!"


@api.get("/users/{user_id}")
async def user(user_id: str, q: str | None = None):
    return {"id": user_id, "q": q}


@api.post("/echo")
async def echo(payload: dict):
    return payload


@api.get("/cpu")
async def cpu():
    return cpu_result()


@api.get("/sleep")
async def sleep():
    return await sleep_result()
