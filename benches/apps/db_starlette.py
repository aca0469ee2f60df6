"""The database endpoints (apps/db.py) as a plain Starlette app: one pool per event loop, opened in the
ASGI lifespan (which percore runs once per loop, uvicorn and Granian once per worker) and handed to the
requests as lifespan state (`request.state.db`)."""

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from benches.apps.db import HTML_TYPE, open_database, query_count, render_fortunes


@asynccontextmanager
async def lifespan(app):
    database = await open_database()
    try:
        yield {"db": database}
    finally:
        await database.close()


async def db(request):
    return JSONResponse(await request.state.db.world())


async def queries(request):
    return JSONResponse(await request.state.db.worlds(query_count(request.query_params.get("n"))))


async def updates(request):
    return JSONResponse(await request.state.db.updates(query_count(request.query_params.get("n"))))


async def fortunes(request):
    rows = await request.state.db.fortunes()
    return HTMLResponse(render_fortunes(rows), media_type=HTML_TYPE)


app = Starlette(
    routes=[
        Route("/db", db),
        Route("/queries", queries),
        Route("/updates", updates),
        Route("/fortunes", fortunes),
    ],
    lifespan=lifespan,
)
