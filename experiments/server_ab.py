"""Any servers side by side, interleaved rounds: req/s, the server's CPU use (of its core) and CPU time per
request (utime + stime of the server and its child processes, from /proc, ÷ requests wrk completed) and the
kernel's share of it (stime).

    python experiments/server_ab.py \\
        "percore=PY -m percore serve benches.apps.db_starlette:app --loops 1 --port PORT" \\
        "granian=PEERS -m granian --interface asgi --port PORT --workers 1 --runtime-threads 1 \\
            --loop uvloop --http 1 --no-ws benches.apps.db_starlette:app" \\
        --path /db --rounds 3 --server-rt "chrt -f 10"

Each variant is NAME=COMMAND, PORT standing for a free port; run from the repository root. The server is
pinned to core 1 and wrk to core 0 (`taskset`), each optionally under a prefix such as `chrt -f 10`
(`--server-rt`, `--wrk-rt`). Unlike benches/run.py it works for any command and reports CPU time, which
shows whether a server was CPU-bound (use ≈ 1.00) and what a request costs it. Used for issue #13's
question of how SCHED_FIFO distorts the database benchmark (docs/benchmarks.md, "Database benchmark").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import run  # noqa: E402  (free_port, wait_until_serving, Endpoint, cpu_seconds)


def one_round(command: str, args) -> tuple[float, float, float, float]:
    port = run.free_port()
    argv = [*args.server_rt.split(), "taskset", "-c", "1", *command.replace("PORT", str(port)).split()]
    process = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        run.wait_until_serving(port, process, run.Endpoint(args.path))
        url = f"http://127.0.0.1:{port}{args.path}"
        run.wrk(url, None, args.warmup, args.connections)
        (user, system), start = run.cpu_seconds(process.pid), time.monotonic()
        requests = run.wrk(url, None, args.duration, args.connections)["requests"]
        (user_end, system_end), elapsed = run.cpu_seconds(process.pid), time.monotonic() - start
        if not requests:
            raise RuntimeError("wrk completed no request")
        user, system = user_end - user, system_end - system
        cpu = user + system
        return requests / elapsed, cpu / elapsed, cpu / requests * 1e6, system / cpu if cpu else 0.0
    finally:
        process.terminate()
        process.wait()


def describe(rps: float, use: float, cost: float, system: float) -> str:
    return f"{rps:8.0f} req/s  CPU use {use:4.2f}  {cost:7.1f} CPU-µs/request ({system:4.0%} system)"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", nargs="+", help="NAME=COMMAND (PORT: the port)")
    parser.add_argument("--path", default="/db")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-rt", default="", help="prefix for the server, e.g. 'chrt -f 10'")
    parser.add_argument("--wrk-rt", default="", help="prefix for wrk, e.g. 'chrt -f 10'")
    args = parser.parse_args()
    run.REALTIME[:] = args.wrk_rt.split()  # run.wrk's prefix (pinned to run.LOAD_CORE, core 0)
    variants = dict(v.split("=", 1) for v in args.variant)
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in variants}
    for index in range(args.rounds):
        for name, command in variants.items():
            row = one_round(command, args)
            results[name].append(row)
            print(f"round {index + 1}: {name:14} {describe(*row)}")
    print(f"\n{args.path}, {args.connections} connections, {args.rounds} rounds of {args.duration} s")
    for name, rows in results.items():
        print(f"{name:14} median {describe(*(statistics.median(row[i] for row in rows) for i in range(4)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
