"""The benchmark endpoints as a FastAPI app, served by percore, uvicorn and Granian alike.

Minimal on purpose and the same work as apps/starlette_app.py: no middleware, no response models (results go
through FastAPI's default jsonable_encoder + JSONResponse path), every handler `async def`.
"""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from benches.apps.common import cpu_result, sleep_result

app = FastAPI()


@app.get("/json")
async def json():
    return {"message": "Hello, World!"}


@app.get("/plaintext")
async def plaintext():
    return PlainTextResponse("Hello, World!")


@app.get("/users/{user_id}")
async def user(user_id: str, q: str | None = None):
    return {"id": user_id, "q": q}


@app.post("/echo")
async def echo(body: dict):
    return body


@app.get("/cpu")
async def cpu():
    return cpu_result()


@app.get("/sleep")
async def sleep():
    return await sleep_result()
