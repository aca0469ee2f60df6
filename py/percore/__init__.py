"""percore: a thread-per-core multi-loop Python web runtime with a Rust core."""

from . import _affinity, _asyncio_patch

_asyncio_patch.install()
_affinity.install()

from ._event_loop import EventLoop, EventLoopPolicy, new_event_loop, run  # noqa: E402
from ._runtime import __version__  # noqa: E402
from ._threadpool import run_in_threadpool  # noqa: E402
from .app import App, Router  # noqa: E402
from .background import BackgroundTask, BackgroundTasks  # noqa: E402
from .datastructures import UploadFile  # noqa: E402
from .exceptions import ConfigurationError, HTTPException, PercoreError, StartupError  # noqa: E402
from .params import Body, Cookie, Depends, File, Form, Header, Path, Query, Security  # noqa: E402
from .requests import Request  # noqa: E402
from .responses import (  # noqa: E402
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
    safe_file,
)
from .staticfiles import StaticFiles  # noqa: E402
from .websockets import WebSocket, WebSocketDisconnect, WebSocketException  # noqa: E402

__all__ = [
    "App",
    "BackgroundTask",
    "BackgroundTasks",
    "Body",
    "ConfigurationError",
    "Cookie",
    "Depends",
    "EventLoop",
    "EventLoopPolicy",
    "File",
    "FileResponse",
    "Form",
    "HTMLResponse",
    "HTTPException",
    "Header",
    "JSONResponse",
    "Path",
    "PercoreError",
    "PlainTextResponse",
    "Query",
    "RedirectResponse",
    "Request",
    "Response",
    "Router",
    "Security",
    "StartupError",
    "StaticFiles",
    "StreamingResponse",
    "UploadFile",
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketException",
    "__version__",
    "new_event_loop",
    "run",
    "run_in_threadpool",
    "safe_file",
]
