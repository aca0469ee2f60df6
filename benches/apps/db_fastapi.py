"""The database endpoints (apps/db.py) as a FastAPI app: the pool and its lifespan as in
apps/db_starlette.py; results go through FastAPI's default jsonable_encoder + JSONResponse path."""

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from benches.apps.db import HTML_TYPE, query_count, render_fortunes
from benches.apps.db_starlette import lifespan

app = FastAPI(lifespan=lifespan)


@app.get("/db")
async def db(request: Request):
    return await request.state.db.world()


@app.get("/queries")
async def queries(request: Request, n: str | None = None):
    return await request.state.db.worlds(query_count(n))


@app.get("/updates")
async def updates(request: Request, n: str | None = None):
    return await request.state.db.updates(query_count(n))


@app.get("/fortunes")
async def fortunes(request: Request):
    rows = await request.state.db.fortunes()
    return HTMLResponse(render_fortunes(rows), media_type=HTML_TYPE)
