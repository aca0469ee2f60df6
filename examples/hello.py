"""The quickstart app: `runtime serve examples.hello:api --loops auto`. Fully typed: `mypy --strict` passes
on it against percore's stubs (tests/test_packaging.py)."""

import asyncio

import percore

api = percore.App()


@api.get("/json")
async def json() -> dict[str, str]:
    return {"message": "Hello, World!"}


@api.get("/plaintext")
def plaintext() -> str:
    return "Hello, World!"


@api.get("/users/{user_id}")
async def user(user_id: str, request: percore.Request) -> dict[str, str | int]:
    return {"id": user_id, "loop": request.loop_index}


@api.get("/sleep")
async def sleep() -> dict[str, float]:
    await asyncio.sleep(0.01)
    return {"slept": 0.01}
