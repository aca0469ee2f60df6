"""``percore.StaticFiles``: a directory of files mounted on a native app, served from Rust.

    api.mount("/static", percore.StaticFiles(directory="static"))

Starlette's names and meaning: ``html=True`` answers a directory with its ``index.html`` (redirecting
``/dir`` to ``/dir/``) and a miss with the directory's ``404.html``; ``check_dir=True`` raises at
construction if the directory is missing. Each request is answered by the Rust core
(runtime/src/static_files.rs) without entering Python: conditional requests, ranges and precompressed
``.br``/``.gz`` siblings included (docs/native-api.md, "Static files").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError


class StaticFiles:
    """Serves the files under ``directory`` (made absolute now; re-resolved, symlinks and all, per
    request). Mount it with ``App.mount`` / ``Router.mount``."""

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str],
        html: bool = False,
        check_dir: bool = True,
    ) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.html = html
        if check_dir and not os.path.isdir(self.directory):
            raise ConfigurationError(f"StaticFiles directory {os.fspath(directory)!r} does not exist")

    def __repr__(self) -> str:
        return f"StaticFiles(directory={self.directory!r}, html={self.html!r})"


@dataclass(frozen=True)
class _Mounted:
    """What the server needs of a mount (``StaticSpec`` in runtime/src/python/server.rs)."""

    directory: str
    html: bool
    #: The mount path without its trailing slash ("" at the root): stripped from request paths.
    prefix: str


@dataclass(frozen=True)
class _StaticRoute:
    """One route of a mount as the server reads it (``RouteSpec``): GET, and so HEAD."""

    path: str
    function: StaticFiles
    static_files: _Mounted
    method: str = "GET"
    params: list[Any] = field(default_factory=list)
    status_code: int = 200


def mount_path(path: str, app: Any) -> str:
    """``path`` checked for ``mount``: the mount path without a trailing slash."""
    if not isinstance(app, StaticFiles):
        raise ConfigurationError(
            f"mount({path!r}, {app!r}): only percore.StaticFiles can be mounted on a native app "
            "(serve other ASGI apps with `runtime serve` on their own)"
        )
    if not path.startswith("/"):
        raise ConfigurationError(f"mount path {path!r} must start with '/'")
    if "{" in path or "}" in path:
        raise ConfigurationError(f"mount path {path!r} cannot hold path parameters")
    return path.rstrip("/")


def static_routes(mounts: list[tuple[str, StaticFiles]]) -> list[_StaticRoute]:
    """The routes of each ``(path, StaticFiles)`` mount: the path itself, with a slash, and below it."""
    routes = []
    for prefix, files in mounts:
        mounted = _Mounted(files.directory, files.html, prefix)
        paths = [*([prefix] if prefix else []), prefix + "/", prefix + "/{*path}"]
        routes += [_StaticRoute(path, files, mounted) for path in paths]
    return routes


__all__ = ["StaticFiles"]
