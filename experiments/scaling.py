"""GIL vs no-GIL: the same percore build on CPython 3.13 (GIL) and 3.13t (free-threaded, same tarball, same
flags), serving pure-Python CPU work on 1 and on 2 loops.

    scripts/dev experiment            # builds everything, runs this, writes experiments/results/*.json

The machine has 2 cores, so with 2 loops the load generator shares a core with a loop: /cpu costs ~1 ms
of CPU per request, so wrk's own share is small there, but /json (microseconds per request) is mostly
a measurement of wrk competing for the cores and is reported only as a caveat.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import run  # noqa: E402  (the benchmark runner's wrk and process helpers)

BUILDS = [("PERCORE_PYTHON_NOGIL", "3.13t"), ("PERCORE_PYTHON_GIL", "3.13 GIL")]
LOOPS = [1, 2]
ENDPOINTS = {"/cpu": 8, "/json": 64}  # path -> wrk connections


def main() -> int:
    duration, runs = int(os.environ.get("DURATION", "5")), int(os.environ.get("RUNS", "3"))
    results: dict = {}
    for key, label in BUILDS:
        python = os.environ.get(key)
        if not python:
            continue
        for loops in LOOPS:
            port = run.free_port()
            command = [python, "-m", "percore", "serve", "experiments.apps.work:api", "--port", str(port)]
            command += ["--loops", str(loops), "--routing", "least-loaded", "--log-level", "warning"]
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        run.request(port, "GET", "/json", None, 1)
                        break
                    except OSError:
                        assert time.monotonic() < deadline, "server did not start"
                        time.sleep(0.1)
                for path, connections in ENDPOINTS.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", url], capture_output=True)
                    rates = []
                    for _ in range(runs):
                        out = subprocess.run(
                            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                            capture_output=True,
                            text=True,
                            check=True,
                        ).stdout
                        rates.append(run.parse_wrk(out))
                    entry = {
                        "median_rps": statistics.median(r["requests_per_second"] for r in rates),
                        "p99_ms": statistics.median(r.get("p99_ms", float("nan")) for r in rates),
                        "runs": rates,
                    }
                    results.setdefault(label, {}).setdefault(path, {})[loops] = entry
                    print(
                        f"{label:9} loops={loops} {path:6} {entry['median_rps']:>9.0f} req/s "
                        f"p99 {entry['p99_ms']:.2f} ms",
                        flush=True,
                    )
            finally:
                run.stop(process)
    print()
    print("| build | endpoint | 1 loop req/s | 2 loops req/s | scaling (2 ÷ 1) | p99 1 → 2 loops (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, paths in results.items():
        for path, by_loops in paths.items():
            one, two = by_loops[1], by_loops[2]
            print(
                f"| {label} | `{path}` | {one['median_rps']:.0f} | {two['median_rps']:.0f} | "
                f"{two['median_rps'] / one['median_rps']:.2f}× | {one['p99_ms']:.2f} → {two['p99_ms']:.2f} |"
            )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    out = ROOT / "experiments" / "results" / f"scaling-{date}-{commit}.json"
    out.write_text(
        json.dumps(
            {"machine": run.machine(), "duration": duration, "runs": runs, "results": results}, indent=2
        )
        + "\n"
    )
    print(f"\nraw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
