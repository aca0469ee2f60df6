"""The database endpoints (apps/db.py) as a percore native app: one pool per event loop, opened by the
loop's on_loop_start hook and kept in that loop's `request.state`."""

import percore

from benches.apps.db import HTML_TYPE, open_database, query_count, render_fortunes

api = percore.App()


@api.on_loop_start
async def open_pool(state):
    state["db"] = await open_database()


@api.on_loop_stop
async def close_pool(state):
    await state["db"].close()


@api.get("/db")
async def db(request: percore.Request):
    return await request.state["db"].world()


@api.get("/queries")
async def queries(request: percore.Request, n: str | None = None):
    return await request.state["db"].worlds(query_count(n))


@api.get("/updates")
async def updates(request: percore.Request, n: str | None = None):
    return await request.state["db"].updates(query_count(n))


@api.get("/fortunes")
async def fortunes(request: percore.Request):
    rows = await request.state["db"].fortunes()
    return percore.HTMLResponse(render_fortunes(rows), media_type=HTML_TYPE)
