"""Every error percore raises derives from ``PercoreError``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from ._runtime import ConfigurationError, PercoreError, StartupError


class AppLoadError(PercoreError):
    """``MODULE:ATTR`` could not be imported or does not name an app."""


class LifespanStartupFailed(PercoreError):
    """The app reported ``lifespan.startup.failed`` (or raised during startup)."""


class HTTPException(PercoreError):
    """Raise in a handler to answer ``status_code`` with ``{"detail": detail}`` (and ``headers``)."""

    def __init__(self, status_code: int, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail if detail is not None else HTTPStatus(status_code).phrase
        self.headers = headers

    def __repr__(self) -> str:
        return f"HTTPException(status_code={self.status_code!r}, detail={self.detail!r})"


__all__ = [
    "AppLoadError",
    "ConfigurationError",
    "HTTPException",
    "LifespanStartupFailed",
    "PercoreError",
    "StartupError",
]
