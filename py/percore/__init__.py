"""percore: a thread-per-core multi-loop Python web runtime with a Rust core."""

from . import _asyncio_patch

_asyncio_patch.install()

from ._runtime import __version__  # noqa: E402
from .app import App  # noqa: E402
from .exceptions import ConfigurationError, PercoreError, StartupError  # noqa: E402
from .requests import Request  # noqa: E402
from .responses import HTMLResponse, JSONResponse, PlainTextResponse, Response  # noqa: E402

__all__ = [
    "App",
    "ConfigurationError",
    "HTMLResponse",
    "JSONResponse",
    "PercoreError",
    "PlainTextResponse",
    "Request",
    "Response",
    "StartupError",
    "__version__",
]
