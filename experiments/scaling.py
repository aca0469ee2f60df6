"""GIL vs no-GIL: the same percore build on CPython 3.13 (GIL) and 3.13t (free-threaded, same tarball, same
flags), serving /json, /cpu and /sleep on 1, 2, … all cores' worth of loops.

    scripts/dev experiment scaling [--duration 5 --runs 3 --warmup 2 --max-loops N]

Writes experiments/results/scaling-<date>-<commit>.json (every repetition: req/s, p50, p75, p90, p99);
experiments/render.py turns it into tables, charts and the many-core projection (scripts/dev runs both).

Per build and loop count, one server (`--loops N --routing least-loaded`); per endpoint a 2 s warm-up
then --runs wrk runs (`-t1`), median req/s and median percentiles. wrk is not pinned: on a machine with
as many loops as cores it shares the cores with the loops, which caps the measured scaling (the
projection's assumptions say how).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _server import ROOT, builds, run, serving

# path -> wrk connections: /cpu needs only a few in flight per loop to keep every loop busy (more would only
# queue); /json as in the benchmark suite; /sleep with many waiting requests (concurrency).
ENDPOINTS = {"/json": 64, "/cpu": 8, "/sleep": 256}
PERCENTILES = ("p50_ms", "p75_ms", "p90_ms", "p99_ms")


def measure(url: str, connections: int, args, script: Path | None = None, env: dict | None = None) -> dict:
    """Warm-up, then --runs wrk runs: the median req/s and percentiles, and every run."""
    command = ["wrk", "-t1", f"-c{connections}", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    environment = dict(os.environ, **(env or {}))
    subprocess.run([*command, f"-d{args.warmup}s", url], capture_output=True, env=environment)
    runs = []
    for _ in range(args.runs):
        output = subprocess.run(
            [*command, f"-d{args.duration}s", url],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        ).stdout
        runs.append(run.parse_wrk(output))
    entry = {
        "median_rps": statistics.median(r["requests_per_second"] for r in runs),
        "connections": connections,
    }
    for key in PERCENTILES:
        entry[key] = statistics.median(r.get(key, float("nan")) for r in runs)
    entry["errors"] = sum(r["non_2xx"] for r in runs)
    entry["runs"] = runs
    return entry


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per point (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per point (default 2)")
    return parser


def write(name: str, document: dict) -> Path:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    now = datetime.datetime.now(datetime.UTC)
    out = ROOT / "experiments" / "results" / f"{name}-{now:%Y-%m-%d}-{commit}.json"
    if out.exists():  # a second run the same day and commit keeps the first
        out = out.with_stem(f"{out.stem}-{now:%H%M%S}")
    out.write_text(json.dumps({"experiment": name, "machine": run.machine(), **document}, indent=2) + "\n")
    print(f"\nraw results: {out.relative_to(ROOT)}")
    return out


def main() -> int:
    parser = arguments(__doc__)
    cores = os.cpu_count() or 1
    parser.add_argument("--max-loops", type=int, default=cores, help=f"default: every core ({cores})")
    args = parser.parse_args()
    results: dict = {}
    problems: list[str] = []
    for label, python in builds():
        for loops in range(1, args.max_loops + 1):
            with serving(python, loops, "least-loaded", problems) as port:
                for path, connections in ENDPOINTS.items():
                    entry = measure(f"http://127.0.0.1:{port}{path}", max(connections, loops), args)
                    results.setdefault(label, {}).setdefault(path, {})[str(loops)] = entry
                    print(
                        f"{label:9} loops={loops} {path:7} {entry['median_rps']:>9.0f} req/s "
                        f"p50 {entry['p50_ms']:.2f} ms p99 {entry['p99_ms']:.2f} ms",
                        flush=True,
                    )
    settings = {**vars(args), "endpoints": ENDPOINTS, "routing": "least-loaded"}
    write("scaling", {"settings": settings, "results": results, "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
