"""The benchmark endpoints as a percore native app (every contender implements the same work)."""

import percore

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
