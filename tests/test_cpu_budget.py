"""`--loops auto` under a container CPU quota: the detection reads a fake cgroup tree (PERCORE_CGROUP_ROOT)
and the server, over real sockets, runs as many loops as the quota pays for and says why in its banner.
The parsing itself (v1, v2, hierarchy, malformed files) is tested in runtime/src/cpu_budget.rs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from percore._runtime import cpu_budget
from percore._supervisor import Supervisor

APP = "tests.apps.runtime_app:api"
MASK = sorted(os.sched_getaffinity(0))

needs_two_cpus = pytest.mark.skipif(len(MASK) < 2, reason="a 1-CPU quota only shows on a mask of 2+ CPUs")


def banner(server) -> str:
    """The server's banner line (logged just after the port opens: wait for it)."""
    deadline = time.monotonic() + 20
    while True:
        lines = [line for line in server.read_stderr().splitlines() if "loop(s) pinned" in line]
        if lines:
            return lines[0]
        assert time.monotonic() < deadline, f"no banner:\n{server.read_stderr()}"
        time.sleep(0.02)


def fake_cgroup_root(root: Path, cpu_max: str) -> Path:
    """A `/` with a cgroup v2 mount at /sys/fs/cgroup, this process in /test.slice/app.scope, and the
    quota on the parent slice (the leaf unlimited), as systemd's CPUQuota= on a slice leaves it."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/test.slice/app.scope\n")
    (root / "proc/self/mountinfo").write_text(
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
    )
    leaf = root / "sys/fs/cgroup/test.slice/app.scope"
    leaf.mkdir(parents=True)
    (leaf / "cpu.max").write_text("max 100000\n")
    (leaf.parent / "cpu.max").write_text(cpu_max)
    return root


@needs_two_cpus
@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("100000 100000\n", "1.0"), ("50000 100000\n", "0.5 of cgroup /test.slice, rounded up")],
)
def test_auto_runs_one_loop_per_cpu_of_the_quota(serve, tmp_path, monkeypatch, cpu_max, quota):
    monkeypatch.setenv("PERCORE_CGROUP_ROOT", str(fake_cgroup_root(tmp_path, cpu_max)))
    server = serve(APP, "--loops", "auto", "--routing", "round-robin")
    client = server.client()
    loops = {client.get("/where").json()["loop"] for _ in range(20)}
    assert loops == {0}, "more loops than the 1-CPU quota answered"
    line = banner(server)
    assert f"1 loop(s) pinned [0→cpu{MASK[0]}] (auto: CPU quota {quota}" in line
    assert f"affinity {len(MASK)} CPUs)" in line


def test_auto_without_a_quota_uses_the_whole_mask(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCORE_CGROUP_ROOT", str(fake_cgroup_root(tmp_path, "max 100000\n")))
    server = serve(APP, "--loops", "auto", "--routing", "round-robin")
    line = banner(server)
    assert f"{len(MASK)} loop(s) pinned" in line
    assert f"(auto: affinity {len(MASK)} CPU{'s' if len(MASK) > 1 else ''}, no CPU quota)" in line
    client = server.client()
    # Round-robin passes over a loop that is busy in Python at that instant (issue #12), so a few requests
    # may all land on one loop; every loop must answer before long.
    seen: set[int] = set()
    for _ in range(200):
        seen.add(client.get("/where").json()["loop"])
        if seen == set(range(len(MASK))):
            break
    assert seen == set(range(len(MASK)))


def test_a_fixed_loop_count_ignores_the_quota(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCORE_CGROUP_ROOT", str(fake_cgroup_root(tmp_path, "100000 100000\n")))
    server = serve(APP, "--loops", "3")
    line = banner(server)
    assert "3 loop(s) pinned" in line and "auto:" not in line


@needs_two_cpus
def test_workers_slice_only_the_cpus_the_quota_pays_for(tmp_path, monkeypatch):
    """One quota covers every worker: with --loops auto the supervisor slices the first ceil(quota) CPUs,
    so the workers' loops add up to what one process would run."""
    monkeypatch.setenv("PERCORE_CGROUP_ROOT", str(fake_cgroup_root(tmp_path, "100000 100000\n")))
    assert cpu_budget()[0] == 1

    def slices(workers: int, loops: str) -> list[list[int]]:
        return Supervisor(
            [], app="x:y", host="127.0.0.1", port=0, workers=workers, loops=loops, shutdown_timeout=None
        ).cpus

    assert slices(1, "auto") == [[MASK[0]]]
    assert slices(2, "auto") == [[MASK[0]], [MASK[0]]]
    assert slices(2, "1") == [[MASK[0]], [MASK[1 % len(MASK)]]], "--loops N is the user's choice"
