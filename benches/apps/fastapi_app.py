"""The benchmark endpoints as a FastAPI app, served by percore, uvicorn and Granian alike.

Minimal on purpose and the same work as apps/starlette_app.py: no middleware, no response models (results go
through FastAPI's default jsonable_encoder + JSONResponse path), every handler `async def`. `POST /depends`
(two chained dependencies and a pydantic body) and `POST /upload` (a 1 MB multipart upload) exist here and
in apps/native.py only.
"""

from fastapi import Depends, FastAPI, Form, Header, UploadFile
from fastapi.responses import PlainTextResponse
from fastapi.staticfiles import StaticFiles

from benches.apps.common import cpu_result, sleep_result, static_directory
from benches.apps.dependencies import Order, order_result, tenant_of, user_of
from benches.apps.uploads import upload_result

app = FastAPI()
app.mount("/static", StaticFiles(directory=static_directory()))


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


async def tenant(x_tenant: str = Header()) -> dict:
    return tenant_of(x_tenant)


async def current_user(t: dict = Depends(tenant), authorization: str | None = Header(None)) -> dict:
    return user_of(t, authorization)


@app.post("/depends")
async def depends(order: Order, user: dict = Depends(current_user)):
    return order_result(order, user)


@app.post("/upload")  # python-multipart parses the form (Starlette's MultiPartParser)
async def upload(file: UploadFile, note: str = Form()):
    return upload_result(file.filename, await file.read(), note)
