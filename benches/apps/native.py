"""The benchmark endpoints as a percore native app (every contender implements the same work)."""

import percore

from benches.apps.common import cpu_result, sleep_result, static_directory
from benches.apps.dependencies import Order, order_result, tenant_of, user_of
from benches.apps.uploads import upload_result

api = percore.App()
api.mount("/static", percore.StaticFiles(directory=static_directory()))


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


async def tenant(x_tenant: str = percore.Header()) -> dict:
    return tenant_of(x_tenant)


async def current_user(
    t: dict = percore.Depends(tenant), authorization: str | None = percore.Header(None)
) -> dict:
    return user_of(t, authorization)


@api.post("/depends")
async def depends(order: Order, user: dict = percore.Depends(current_user)):
    return order_result(order, user)


@api.post("/upload")
async def upload(file: percore.UploadFile, note: str = percore.Form()):
    return upload_result(file.filename, await file.read(), note)
