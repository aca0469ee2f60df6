"""tests/apps/docs_app.py as it is served without ``percore[docs]`` (no Swagger UI, no ReDoc installed):
the built-in /docs page. The look-ups are replaced before the server renders the pages."""

from percore import _openapi

from .docs_app import api

_openapi.swagger_ui_dir = lambda: None
_openapi.redoc_script = lambda: None

__all__ = ["api"]
