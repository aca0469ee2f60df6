"""Every error percore raises derives from ``PercoreError``."""

from __future__ import annotations

from ._runtime import ConfigurationError, PercoreError, StartupError


class AppLoadError(PercoreError):
    """``MODULE:ATTR`` could not be imported or does not name an app."""


__all__ = ["AppLoadError", "ConfigurationError", "PercoreError", "StartupError"]
