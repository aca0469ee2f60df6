"""What ``runtime --version`` (and ``python -m percore --version``) prints: percore's version, the
interpreter it runs on, and whether the GIL is on - what a bug report needs to start with."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

from . import _runtime
from .server import free_threaded_build, gil_enabled


def version_text() -> str:
    build = "free-threaded build" if free_threaded_build() else "GIL build"
    if not free_threaded_build():
        gil = "enabled (GIL build)"
    elif gil_enabled():
        gil = "enabled (free-threaded build; PYTHON_GIL=1 or an extension that needs the GIL turned it on)"
    else:
        gil = "disabled (free-threaded build)"
    return (
        f"percore {_runtime.__version__}\n"
        f"Python: {platform.python_implementation()} {platform.python_version()} ({build}) {sys.executable}\n"
        f"GIL: {gil}"
    )


class VersionAction(argparse.Action):
    """``--version``: prints ``version_text()`` as it is (argparse's own action would re-wrap the lines)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()
