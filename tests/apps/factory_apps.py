"""App factories for `runtime serve --factory` (tests/test_cli.py)."""

from __future__ import annotations

import percore

created = []


def create_app() -> percore.App:
    api = percore.App()
    created.append(api)

    @api.get("/made")
    async def made():
        return {"by": "factory", "apps_created": len(created)}

    return api


def create_starlette():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def made(request):
        return PlainTextResponse("made by a factory")

    return Starlette(routes=[Route("/made", made)])


def broken_factory():
    raise RuntimeError("the database URL is not set")


def forgets_to_return():
    percore.App()


not_callable = 42


async def async_factory():
    return percore.App()
