"""``--reload``: where the app's sources are (found without importing the app) and a watcher that polls
them for changes."""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path

RELOAD_POLL_SECONDS = 0.5
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})


def app_source_dir(target: str, app_dir: str | None = None) -> Path:
    """The directory of the app module ``MODULE`` in ``MODULE:ATTR``, found without importing it (the
    supervisor never runs app code) where the worker will import it from (``--app-dir`` first); the current
    directory when it cannot be found."""
    module = target.partition(":")[0]
    search: list[str] | None = [*([os.path.abspath(app_dir)] if app_dir else []), os.getcwd(), *sys.path]
    spec = None
    parts = module.split(".")
    for depth in range(len(parts)):
        if not search or not all(parts):
            return Path.cwd()
        try:
            spec = PathFinder.find_spec(".".join(parts[: depth + 1]), search)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return Path.cwd()
        search = list(spec.submodule_search_locations or [])
    if spec is not None and spec.has_location and spec.origin:
        return Path(spec.origin).resolve().parent
    return Path(search[0]).resolve() if search else Path.cwd()


class SourceWatcher:
    """Polls ``(mtime, size)`` of every ``*.py`` file under some directories (hidden directories,
    ``__pycache__`` and installed packages skipped). No dependency: watchfiles has no 3.13t guarantee."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories
        self._files = self._scan()

    def _scan(self) -> dict[str, tuple[int, int]]:
        files: dict[str, tuple[int, int]] = {}
        for directory in self.directories:
            for root, dirs, names in os.walk(directory):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
                for name in names:
                    if name.endswith(".py"):
                        path = os.path.join(root, name)
                        try:
                            stat = os.stat(path)
                        except OSError:  # deleted while we walked
                            continue
                        files[path] = (stat.st_mtime_ns, stat.st_size)
        return files

    def changes(self) -> list[str]:
        """Files created, modified or deleted since the last call."""
        files = self._scan()
        changed = sorted(p for p in files.keys() | self._files.keys() if files.get(p) != self._files.get(p))
        self._files = files
        return changed
