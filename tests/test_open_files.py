"""The open-files limit at start: the soft limit is raised to the hard one, and a hard limit below what
--loops × --max-connections allow is reported (docs/limits.md)."""

from __future__ import annotations

import resource
import shutil

import pytest

from .conftest import ServerProcess

APP = "tests.apps.runtime_app:api"

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")


def limited(soft: int, hard: int, *args: str) -> ServerProcess:
    """A server started under `prlimit --nofile=SOFT:HARD` (prlimit execs it: same process)."""
    server = ServerProcess(APP, "--loops", "1", *args)
    server.command = ["prlimit", f"--nofile={soft}:{hard}", "--", *server.command]
    return server.start()


def open_files_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise here")
    server = limited(512, hard, "--max-connections", "100")
    try:
        assert open_files_limits(server.process.pid) == (hard, hard)
        assert server.get("/where").status == 200
    finally:
        assert server.stop() == 0
    assert "open-files limit" not in server.stderr


def test_a_hard_limit_below_the_connection_limit_is_warned_about():
    server = limited(256, 256, "--max-connections", "1000")
    try:
        assert server.get("/where").status == 200  # a warning, not a refusal
    finally:
        assert server.stop() == 0
    warnings = [line for line in server.stderr.splitlines() if "open-files limit" in line]
    assert len(warnings) == 1, server.stderr
    assert (
        "the open-files limit is 256, but --loops 1 × --max-connections 1000 need about 1064" in warnings[0]
    )
    assert " WARNING percore: " in warnings[0]

    enough = limited(256, 256, "--max-connections", "100")
    assert enough.get("/where").status == 200
    assert enough.stop() == 0
    assert "open-files limit" not in enough.stderr
