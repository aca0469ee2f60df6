"""percore's logger and the hook the Rust side calls when a handler fails."""

from __future__ import annotations

import logging

logger = logging.getLogger("percore")


def log_handler_error(route: str, error: BaseException) -> None:
    logger.error("Exception in handler for %s", route, exc_info=(type(error), error, error.__traceback__))


def configure(level: str) -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
