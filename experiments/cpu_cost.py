"""CPU cost per request of two or more server variants, measured in interleaved rounds on one machine:
the server's own CPU time (utime + stime of every thread, from /proc) divided by the requests wrk
completed. Robust to a shared, noisy machine where req/s is not: another process taking a core slows a
round down but does not add CPU time to the server.

    python experiments/cpu_cost.py --variant main=/tmp/main-py:experiments.apps.work:api:/json \\
        --variant branch=:experiments.apps.work:api:/json --loops 1 --rounds 5 [--close] [-- wrk args]

A variant is NAME=PYTHONPATH:MODULE:ATTR:PATH[ SERVER-ARGS...]; an empty PYTHONPATH uses the installed
percore; arguments after the path go to `runtime serve` (e.g. `:benches.apps.db_starlette:app:/db --loop
asyncio`). The server
runs under this interpreter (`sys.executable`) from the repository root. `--close` sends `Connection:
close` (a new connection per request: the accept path); otherwise keep-alive connections (`-c`).

Used for issue #12 (docs/benchmarks.md, "Sync handlers and the shared accept queue").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import run  # noqa: E402  (free_port, wait_until_serving, stop, cpu_seconds, completed_requests)


def one_round(variant: str, args) -> tuple[float, float]:
    pythonpath, module, attr, rest = variant.split(":", 3)
    path, *server_args = rest.split()
    port = run.free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p))
    command = [sys.executable, "-m", "percore", "serve", f"{module}:{attr}", "--port", str(port)]
    command += ["--loops", str(args.loops), "--routing", args.routing, "--log-level", "warning", *server_args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run.wait_until_serving(port, process, run.Endpoint(path))
        wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", f"http://127.0.0.1:{port}{path}"]
        if args.close:
            wrk[1:1] = ["-H", "Connection: close"]
        subprocess.run([*wrk[:-2], "-d1s", wrk[-1]], capture_output=True)  # warm-up
        before = sum(run.cpu_seconds(process.pid))
        output = subprocess.run(wrk, capture_output=True, text=True).stdout
        used = sum(run.cpu_seconds(process.pid)) - before
    finally:
        run.stop(process)
    done = run.completed_requests(output)
    return (used / done * 1e6 if done else float("nan")), done / args.duration


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", required=True, help="NAME=PYTHONPATH:MODULE:ATTR:PATH")
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--routing", default="local")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--close", action="store_true", help="Connection: close (a connection per request)")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    costs: dict[str, list[float]] = {name: [] for name in variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, variant in variants.items():
            cost, rate = one_round(variant, args)
            costs[name].append(cost)
            rates[name].append(rate)
            print(f"round {round_ + 1}: {name:12} {cost:8.2f} CPU-µs/request  {rate:8.0f} req/s", flush=True)
        time.sleep(0.5)
    print(
        f"\n{args.loops} loop(s), {args.connections} connections{', Connection: close' if args.close else ''}"
    )
    for name in variants:
        print(
            f"{name:12} median {statistics.median(costs[name]):8.2f} CPU-µs/request "
            f"(min {min(costs[name]):.2f}, max {max(costs[name]):.2f}); median {statistics.median(rates[name]):.0f} req/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
