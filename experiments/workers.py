"""Workers vs loops on one interpreter build: the same app served as 1 process × 1 loop, 1 process × N
loops, and N worker processes × 1 loop (`runtime serve --workers N`), measured with wrk in one run.

    $PY experiments/workers.py [--endpoint /cpu] [--connections 8] [--duration 5] [--runs 3] [--cores N]

Run it with each build's python (`scripts/dev env gil release`, `scripts/dev env nogil release`). Prints a
markdown table: requests/s, p99, the ratio to one loop, and the resident memory of every server process
(supervisor included). Results are in docs/workers.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "experiments.apps.work:api"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def wrk(port: int, endpoint: str, connections: int, seconds: int) -> tuple[float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}{endpoint}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rate, float(p99.group(1)) * scale


def measure(args: list[str], options) -> tuple[float, float, int, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "percore",
        "serve",
        APP,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not start: {command}") from None
                time.sleep(0.1)
        if "--workers" in args:  # every worker serving, not just the first
            time.sleep(2)
        wrk(port, options.endpoint, options.connections, 1)  # warm-up
        rate, p99 = wrk(port, options.endpoint, options.connections, options.duration)
        pids = [server.pid, *children(server.pid)]
        return rate, p99, sum(rss_kib(pid) for pid in pids), len(pids)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="/cpu")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    options = parser.parse_args()
    n = options.cores
    build = "3.13t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "3.13 GIL"
    rows = [("1 process × 1 loop", ["--loops", "1"])]
    rows.append((f"1 process × {n} loops", ["--loops", str(n)]))
    rows.append((f"{n} workers × 1 loop", ["--workers", str(n), "--loops", "1"]))
    print(
        f"{build}, `{options.endpoint}`, {options.connections} connections, median of {options.runs} interleaved "
        f"runs of {options.duration} s\n"
    )
    print("| build | layout | req/s | vs 1 loop | p99 ms | processes | RSS total MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    # Interleaved rounds, medians: load from elsewhere on the machine drifts, and hits every layout alike.
    results: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name, _ in rows}
    for _ in range(options.runs):
        for name, args in rows:
            results[name].append(measure(args, options))
    base = None
    for name, _ in rows:
        runs = results[name]
        rate = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        rss = statistics.median(r[2] for r in runs)
        base = base or rate
        print(
            f"| {build} | {name} | {rate:.0f} | {rate / base:.2f}× | {p99:.1f} | {runs[0][3]} | {rss / 1024:.0f} |"
        )


if __name__ == "__main__":
    main()
