"""The benchmark endpoints as a plain Starlette app (a Route list, no middleware): the same work as
apps/fastapi_app.py without FastAPI's dependency and validation layer."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from benches.apps.common import cpu_result, sleep_result, static_directory


async def json(request):
    return JSONResponse({"message": "Hello, World!"})


async def plaintext(request):
    return PlainTextResponse("Hello, World!")


async def user(request):
    return JSONResponse({"id": request.path_params["user_id"], "q": request.query_params.get("q")})


async def echo(request):
    return JSONResponse(await request.json())


async def cpu(request):
    return JSONResponse(cpu_result())


async def sleep(request):
    return JSONResponse(await sleep_result())


app = Starlette(
    routes=[
        Route("/json", json),
        Route("/plaintext", plaintext),
        Route("/users/{user_id}", user),
        Route("/echo", echo, methods=["POST"]),
        Route("/cpu", cpu),
        Route("/sleep", sleep),
        Mount("/static", StaticFiles(directory=static_directory())),
    ]
)
