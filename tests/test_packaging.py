"""What a user of the installed package sees: `runtime --version` / `python -m percore --version`, and typed
apps checked by `mypy --strict` against the package's stubs (py.typed, _runtime.pyi). The wheels themselves
are installed and smoke-tested by `scripts/dev smoke` (tests/wheel_smoke.py), part of `scripts/dev test`."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import percore
import pytest

from .conftest import FREE_THREADED, ROOT


def version_of(*command: str, **env: str) -> str:
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("how", ["runtime", "python -m percore"])
def test_version_names_percore_the_interpreter_and_the_gil(how):
    command = (
        [str(Path(sys.executable).parent / "runtime")]
        if how == "runtime"
        else [sys.executable, "-m", "percore"]
    )
    lines = version_of(*command, "--version").splitlines()
    assert lines[0] == f"percore {percore.__version__}"
    build = "free-threaded build" if FREE_THREADED else "GIL build"
    assert lines[1].startswith(
        f"Python: {platform.python_implementation()} {platform.python_version()} ({build}) "
    )
    # The interpreter's path: the venv's python (the console script runs it too).
    assert Path(lines[1].rsplit(" ", 1)[1]).parent == Path(sys.executable).parent
    assert lines[2] == (
        "GIL: disabled (free-threaded build)" if FREE_THREADED else "GIL: enabled (GIL build)"
    )


@pytest.mark.skipif(not FREE_THREADED, reason="PYTHON_GIL=1 turns the GIL on in a free-threaded build only")
def test_version_says_when_the_gil_was_turned_on_in_a_free_threaded_build():
    output = version_of(sys.executable, "-m", "percore", "--version", PYTHON_GIL="1")
    assert "GIL: enabled (free-threaded build; PYTHON_GIL=1" in output


# Much of the public API, as a user's typed code uses it.
TYPED_APP = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import percore
from percore import Body, Header, HTTPException, JSONResponse, Query, Request, Response, Router

api = percore.App(title="typed", version="1.0.0", docs_url="/docs", redoc_url=None)
items = Router(prefix="/items")


@dataclass
class Item:
    name: str
    price: float


@items.get("/{item_id}")
async def read(
    item_id: int, q: Annotated[str | None, Query()] = None, x_token: Annotated[str, Header()] = ""
) -> Item:
    if item_id < 0:
        raise HTTPException(404, detail="no such item")
    return Item(name=q or x_token, price=1.0)


@items.post("", status_code=201)
async def create(item: Annotated[Item, Body()]) -> JSONResponse:
    return JSONResponse({"name": item.name}, status_code=201)


@api.get("/request")
async def describe(request: Request) -> dict[str, Any]:
    body: Any = await request.json() if request.body else None
    return {"path": request.path, "loop": request.loop_index, "client": request.client, "body": body}


@api.middleware
async def timing(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers.append(("x-typed", "yes"))
    return response


@api.on_loop_start
def start(state: dict[str, Any]) -> None:
    state["ready"] = True


api.include_router(items)
schema: dict[str, Any] = api.openapi()
"""


def test_mypy_strict_passes_on_typed_apps(tmp_path):
    (tmp_path / "typed_app.py").write_text(TYPED_APP)
    (tmp_path / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())
    # From outside the repository: percore is found where it is installed, as in a user's project.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "hello.py",
            "typed_app.py",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 2 source files" in result.stdout
