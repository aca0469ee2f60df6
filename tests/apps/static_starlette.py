"""The reference for tests/test_staticfiles.py: Starlette's StaticFiles on the same directory and paths."""

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

ROOT = os.environ.get("PERCORE_TEST_STATIC", os.path.dirname(__file__))
app = Starlette(
    routes=[
        Mount("/static", StaticFiles(directory=ROOT)),
        Mount("/site", StaticFiles(directory=ROOT, html=True)),
    ]
)
