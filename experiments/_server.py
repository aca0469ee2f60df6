"""The experiments' percore server: which builds to measure, and one server of experiments/apps/work.py
started, checked and stopped around a measurement (benches/run.py's process helpers)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import run  # noqa: E402  (the benchmark runner's wrk parsing and process helpers)

BUILDS = [("PERCORE_PYTHON_NOGIL", "3.13t"), ("PERCORE_PYTHON_GIL", "3.13 GIL")]


def builds() -> Iterator[tuple[str, str]]:
    """(label, python) of every build whose interpreter is set in the environment (scripts/dev sets both)."""
    for key, label in BUILDS:
        python = os.environ.get(key)
        if python:
            yield label, python


def checked_stop(process: subprocess.Popen, python: str, extension: dict | None, problems: list[str]) -> None:
    """Stop the server; note it if percore's extension was a debug build or was rebuilt meanwhile."""
    run.stop(process)
    for problem in run.extension_problems(extension, python):
        problems.append(problem)
        print(f"PROBLEM: {problem}", flush=True)


def start(python: str, loops: int, routing: str) -> tuple[subprocess.Popen, int]:
    """A percore server of experiments/apps/work.py, answering HTTP."""
    port = run.free_port()
    command = [python, "-m", "percore", "serve", "experiments.apps.work:api", "--port", str(port)]
    command += ["--loops", str(loops), "--routing", routing, "--log-level", "warning"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run.wait_until_serving(port, process, run.Endpoint("/json"))
    except RuntimeError:
        run.stop(process)
        raise
    return process, port


@contextlib.contextmanager
def serving(python: str, loops: int, routing: str, problems: list[str]) -> Iterator[int]:
    """A started server's port; stopped on the way out, with any problem of its extension in `problems`."""
    extension = run.percore_extension(python)
    process, port = start(python, loops, routing)
    try:
        yield port
    finally:
        checked_stop(process, python, extension, problems)
