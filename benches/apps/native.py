"""The benchmark endpoints as a percore native app (every contender implements the same work)."""

from json import loads

import percore

api = percore.App()


@api.get("/json")
async def json():
    return {"message": "Hello, World!"}


@api.get("/plaintext")
async def plaintext():
    return "Hello, World!"


@api.get("/users/{user_id}")
async def user(user_id: str, request: percore.Request):
    return {"id": user_id, "q": request.query_string}


@api.post("/echo")
async def echo(request: percore.Request):
    return loads(request.body)
