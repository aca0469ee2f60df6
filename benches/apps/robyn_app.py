"""The benchmark endpoints as a Robyn app (its own Rust HTTP server, `async def` handlers on its asyncio loop).

Run by benches/run.py as `python benches/apps/robyn_app.py --processes 1 --workers 1 ...` with
ROBYN_HOST/ROBYN_PORT set: one process, one server worker, pinned to one core like every contender.
Dicts are returned as JSON and strings as text/plain by Robyn itself, as percore's native app does.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: `benches` importable

from robyn import Robyn

from benches.apps.common import cpu_result, sleep_result

app = Robyn(__file__)


@app.get("/json")
async def json(request):
    return {"message": "Hello, World!"}


@app.get("/plaintext")
async def plaintext(request):
    return "Hello, World!"


@app.get("/users/:user_id")
async def user(request):
    return {"id": request.path_params["user_id"], "q": request.query_params.get("q", None)}


@app.post("/echo")
async def echo(request):
    return request.json()


@app.get("/cpu")
async def cpu(request):
    return cpu_result()


@app.get("/sleep")
async def sleep(request):
    return await sleep_result()


if __name__ == "__main__":
    app.start(host="127.0.0.1", port=8000)
