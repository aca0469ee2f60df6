"""StaticFiles mounted on a native app (tests/test_staticfiles.py): $PERCORE_TEST_STATIC is the directory.

/static plain, /site in html mode, /v1/assets through an included router. /calls counts the requests
that entered Python (a middleware sees every Python-served request; static files must never be one)."""

import os

import percore

api = percore.App(openapi_url=None)
ROOT = os.environ.get("PERCORE_TEST_STATIC", os.path.dirname(__file__))
api.mount("/static", percore.StaticFiles(directory=ROOT))
api.mount("/site", percore.StaticFiles(directory=ROOT, html=True))
v1 = percore.Router(prefix="/v1")
v1.mount("/assets", percore.StaticFiles(directory=ROOT))
api.include_router(v1)
calls = [0]


@api.middleware
async def count(request, call_next):
    calls[0] += 1
    return await call_next(request)


@api.get("/calls")
async def python_calls():
    return {"calls": calls[0]}


# The same directory mounted at the root in html mode (test_a_root_mount_redirects_to_a_local_path).
root_api = percore.App(openapi_url=None)
root_api.mount("/", percore.StaticFiles(directory=ROOT, html=True))
