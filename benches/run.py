"""percore's load benchmark: each contender pinned to one core, wrk pinned to the other, same run.

    scripts/dev bench                      # builds everything, then runs this
    python benches/run.py --duration 10    # with the environment below already set

Environment (scripts/dev bench sets it): PERCORE_PYTHON_NOGIL / PERCORE_PYTHON_GIL — interpreters with a
release build of percore installed; HYPER_BASELINE — the benches/hyper-baseline binary.

Results: a JSON file per run in benches/results/ (machine, versions, commit, every repetition) and a
markdown table on stdout. Conclusions are drawn from ratios within one run, never from absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = "1"
LOAD_CORE = "0"


@dataclass
class Contender:
    name: str
    port: int
    command: list[str]
    endpoints: list[str]
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def contenders(port: int) -> list[Contender]:
    found = []
    baseline = os.environ.get("HYPER_BASELINE")
    if baseline:
        found.append(Contender("hyper (pure Rust, the limit)", port, [baseline, str(port)], ["/json"]))
    for key, label in [("PERCORE_PYTHON_NOGIL", "3.13t"), ("PERCORE_PYTHON_GIL", "3.13 GIL")]:
        python = os.environ.get(key)
        if python:
            found.append(
                Contender(
                    f"percore native, 1 loop ({label})",
                    port,
                    [
                        python,
                        "-m",
                        "percore",
                        "serve",
                        "benches.apps.native:api",
                        "--port",
                        str(port),
                        "--loops",
                        "1",
                        "--log-level",
                        "warning",
                    ],
                    ["/json", "/plaintext", "/users/42?q=x"],
                )
            )
    return found


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not open its port")


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict:
    result = {"requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match:
            result[f"p{percentile}_ms"] = float(match.group(1)) * LATENCY_UNITS[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = socket_errors.group(1) if socket_errors else ""
    return result


def wrk(url: str, duration: int, connections: int) -> dict:
    output = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(output)


def measure(contender: Contender, args) -> dict:
    port = contender.port
    env = dict(os.environ, PYTHONPATH=str(ROOT), **contender.env)
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *contender.command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = {}
    try:
        wait_for_port(port, process)
        for endpoint in contender.endpoints:
            url = f"http://127.0.0.1:{port}{endpoint}"
            wrk(url, args.warmup, args.connections)
            runs = [wrk(url, args.duration, args.connections) for _ in range(args.runs)]
            rates = [run["requests_per_second"] for run in runs]
            results[endpoint] = {
                "median_rps": statistics.median(rates),
                "min_rps": min(rates),
                "max_rps": max(rates),
                "p50_ms": statistics.median(run.get("p50_ms", float("nan")) for run in runs),
                "p99_ms": statistics.median(run.get("p99_ms", float("nan")) for run in runs),
                "errors": sum(run["non_2xx"] for run in runs),
                "runs": runs,
            }
            rate = results[endpoint]["median_rps"]
            print(f"  {contender.name:40} {endpoint:16} {rate:>10.0f} req/s", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    return results


def machine() -> dict:
    def version(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "wrk": version(["wrk", "--version"]) or "wrk",
        "rustc": version(["rustc", "--version"]),
        "pythons": {
            key: version([os.environ[key], "-VV"])
            for key in ("PERCORE_PYTHON_NOGIL", "PERCORE_PYTHON_GIL")
            if os.environ.get(key)
        },
    }


def table(results: dict) -> str:
    baseline = results.get("hyper (pure Rust, the limit)", {}).get("/json", {}).get("median_rps")
    lines = [
        "| contender | endpoint | req/s (median) | spread | p50 ms | p99 ms | vs hyper /json |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, endpoints in results.items():
        for endpoint, r in endpoints.items():
            spread = f"{r['min_rps']:.0f}–{r['max_rps']:.0f}"
            ratio = f"{r['median_rps'] / baseline:.2f}×" if baseline else "–"
            lines.append(
                f"| {name} | `{endpoint}` | {r['median_rps']:.0f} | {spread} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/dev bench installs it)", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: one for the server, one for wrk", file=sys.stderr)
        return 1
    results = {}
    for contender in contenders(free_port()):
        print(f"{contender.name}", flush=True)
        results[contender.name] = measure(contender, args)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{info['date'][:10]}-{info['commit']}.json"
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path.write_text(json.dumps({"machine": info, "settings": settings, "results": results}, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nraw results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
