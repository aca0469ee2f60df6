"""The quickstart app: `runtime serve examples.hello:api --loops auto`."""

import asyncio

import percore

api = percore.App()


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}


@api.get("/plaintext")
def plaintext():
    return "Hello, World!"


@api.get("/users/{user_id}")
async def user(user_id: str, request: percore.Request):
    return {"id": user_id, "loop": request.loop_index}


@api.get("/sleep")
async def sleep():
    await asyncio.sleep(0.01)
    return {"slept": 0.01}
