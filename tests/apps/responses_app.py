"""Handlers returning each kind of value."""

import percore

api = percore.App()


@api.get("/dict")
async def as_dict():
    return {"a": 1}


@api.get("/list")
def as_list():
    return [1, "two", None]


@api.get("/str")
async def as_str():
    return "héllo"


@api.get("/bytes")
async def as_bytes():
    return b"\x00\x01"


@api.get("/none")
async def as_none():
    return None


@api.get("/created", status_code=201)
async def created():
    return {"created": True}


@api.get("/custom")
async def custom():
    return percore.HTMLResponse("<h1>teapot</h1>", status_code=418, headers={"X-Teapot": "yes"})


@api.get("/json-response")
def json_response():
    return percore.JSONResponse({"accepted": [1, 2]}, status_code=202)
