"""percore's load benchmark: each contender pinned to one core, wrk pinned to the other, same run.

    scripts/dev bench                                  # builds everything, then runs this
    scripts/dev bench --only FastAPI --only RSGI       # a subset (case-insensitive substrings of names)
    python benches/run.py --list                       # with the environment below already set

Environment (scripts/dev bench sets it): PERCORE_PYTHON_NOGIL / PERCORE_PYTHON_GIL — interpreters with a
release build of percore (and FastAPI) installed; HYPER_BASELINE — the benches/hyper-baseline binary;
PEERS_PYTHON — a GIL CPython with benches/requirements-peers.txt (uvicorn, Granian, Robyn). Contenders whose
variable is unset are left out.

Every contender serves the same endpoints (benches/apps/) with one worker, one event loop, one thread,
pinned to core 1. Before measuring, each endpoint is requested once and must answer 2xx.

Results: a JSON file per run in benches/results/ (machine, versions, commit, every repetition);
benches/render.py turns it into markdown tables and PNG charts beside it (scripts/dev bench runs both).
Conclusions are drawn from ratios within one run, never from absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
SERVER_CORE = "1"
LOAD_CORE = "0"
# Server and wrk under SCHED_FIFO (`--realtime`, the default when allowed): on a shared 2-core machine
# anything else runnable (a compile, an editor's indexer) otherwise takes 30-50% of the server's core
# and req/s measures the scheduler (experiments/starlette-gap/README.md). The kernel still leaves
# other tasks 5% (sched_rt_runtime_us), so nothing is starved for good.
REALTIME: list[str] = []
PORT = "{port}"  # stands for the contender's port in its command; a free one is chosen per contender


@dataclass(frozen=True)
class Endpoint:
    """What wrk requests. `key` names it in the results ("/json", "POST /echo"); a wrk Lua `script` is
    used for anything a plain GET cannot express, and its request body, if any, lives beside it as
    <script>.json so that the pre-flight check sends the same bytes. `connections` overrides
    --connections (the /sleep endpoint measures concurrency, so it is driven with many connections)."""

    key: str
    script: Path | None = None
    connections: int | None = None

    @property
    def method(self) -> str:
        return self.key.rpartition(" ")[0] or "GET"

    @property
    def path(self) -> str:
        return self.key.rpartition(" ")[2]


SLEEP_CONNECTIONS = 256
ECHO = Endpoint("POST /echo", BENCHES / "echo.lua")
SLEEP = Endpoint("/sleep", connections=SLEEP_CONNECTIONS)
APP_ENDPOINTS = [Endpoint("/json"), Endpoint("/plaintext"), Endpoint("/users/42?q=x"), ECHO]
APP_ENDPOINTS += [Endpoint("/cpu"), SLEEP]
# The hyper baseline does no Python work, so only the endpoints whose work it can do without Python
# (fixed bytes; a 10 ms timer) are measured on it; the tables say "n/a" for the rest.
HYPER_ENDPOINTS = [Endpoint("/json"), SLEEP]

HYPER = "hyper (pure Rust, the limit)"
UVICORN = "uvicorn {} (uvloop+httptools)"
GRANIAN_ASGI = "Granian ASGI {}"
GRANIAN_RSGI = "Granian RSGI (raw)"
ROBYN = "Robyn"
PERCORE = "percore {}, 1 loop ({})"
BUILDS = [("PERCORE_PYTHON_NOGIL", "3.13t"), ("PERCORE_PYTHON_GIL", "3.13 GIL")]
FRAMEWORKS = {"FastAPI": "benches.apps.fastapi_app:app", "Starlette": "benches.apps.starlette_app:app"}


@dataclass
class Contender:
    name: str
    command: list[str]
    endpoints: list[Endpoint]
    env: dict[str, str] = field(default_factory=dict)
    # Robyn 0.88 in single-process mode ignores SIGTERM and SIGINT (measured): it is killed after the
    # grace period every time, which says nothing about the numbers, so it is not reported as a problem.
    killed_is_expected: bool = False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percore(python: str, app: str) -> list[str]:
    return [python, "-m", "percore", "serve", app, "--loops", "1", "--log-level", "warning", "--port", PORT]


def uvicorn(python: str, app: str) -> list[str]:
    return [
        *(python, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", PORT, "--workers", "1"),
        *("--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"),
    ]


def granian(python: str, interface: str, app: str) -> list[str]:
    # One worker process with one Rust runtime thread; the event loop is named rather than left to "auto"
    # (which picks uvloop when installed). HTTP/1 only, like every other contender here.
    return [
        *(python, "-m", "granian", "--interface", interface, "--host", "127.0.0.1", "--port", PORT),
        *("--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1", "--no-ws"),
        *("--no-access-log", "--log-level", "warning", app),
    ]


def robyn(python: str) -> list[str]:
    # --processes 1 keeps Robyn in this process (no fork); --workers 1 gives its Rust server one worker
    # thread; handlers run on the asyncio (uvloop) loop of the main thread. Host and port: ROBYN_HOST/PORT.
    script = str(BENCHES / "apps" / "robyn_app.py")
    return [python, script, "--processes", "1", "--workers", "1", "--disable-openapi", "--log-level", "WARN"]


def contenders() -> list[Contender]:
    """Every contender the environment provides, grouped so that peers sit next to each other."""
    pythons = [(os.environ[key], label) for key, label in BUILDS if os.environ.get(key)]
    peers = os.environ.get("PEERS_PYTHON")
    found = []
    baseline = os.environ.get("HYPER_BASELINE")
    if baseline:
        found.append(Contender(HYPER, [baseline, PORT], HYPER_ENDPOINTS))
    for python, label in pythons:
        found.append(
            Contender(
                PERCORE.format("native", label), percore(python, "benches.apps.native:api"), APP_ENDPOINTS
            )
        )
    if peers:
        found.append(
            Contender(GRANIAN_RSGI, granian(peers, "rsgi", "benches.apps.rsgi_app:app"), APP_ENDPOINTS)
        )
        found.append(
            Contender(
                ROBYN,
                robyn(peers),
                APP_ENDPOINTS,
                env={"ROBYN_HOST": "127.0.0.1", "ROBYN_PORT": PORT},
                killed_is_expected=True,
            )
        )
    for framework, app in FRAMEWORKS.items():
        for python, label in pythons:
            found.append(Contender(PERCORE.format(framework, label), percore(python, app), APP_ENDPOINTS))
        if peers:
            found.append(Contender(UVICORN.format(framework), uvicorn(peers, app), APP_ENDPOINTS))
            found.append(
                Contender(GRANIAN_ASGI.format(framework), granian(peers, "asgi", app), APP_ENDPOINTS)
            )
    return found


def request(port: int, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def request_body(script: Path | None) -> bytes | None:
    if script is None or not script.with_suffix(".json").exists():
        return None
    return script.with_suffix(".json").read_bytes().rstrip()


def wait_until_serving(port: int, process: subprocess.Popen, endpoint: Endpoint, timeout: float = 30) -> None:
    """Until the server answers HTTP. An open port is not enough: Granian binds before its worker runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            request(port, endpoint.method, endpoint.path, request_body(endpoint.script), timeout=2)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer HTTP within {timeout:.0f} s")


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    result = {"requests_per_second": float(rate.group(1))}
    for percentile in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match:
            result[f"p{percentile}_ms"] = float(match.group(1)) * LATENCY_UNITS[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = socket_errors.group(1) if socket_errors else ""
    return result


def wrk(url: str, script: Path | None, duration: int, connections: int) -> dict:
    command = [
        *REALTIME,
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def stop(process: subprocess.Popen) -> dict:
    """SIGTERM, up to 10 s for a graceful exit, then SIGKILL to the whole process group (Granian's worker
    processes included) so that nothing of this contender is left to compete with the next one."""
    started = time.monotonic()
    killed = False
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            killed = True
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    return {
        "exit": process.returncode,
        "killed": killed,
        "stop_seconds": round(time.monotonic() - started, 2),
    }


DEBUG_BUILD_BYTES = 20 * 2**20  # percore's release extension is ~2.5 MB, a debug build ~45 MB


def percore_extension(python: str) -> dict | None:
    """Path, size and mtime of the percore extension `python` imports, or None if it has none.

    The venvs are shared with `scripts/dev test` and `scripts/dev env`, which rebuild the extension in
    *debug* into the same place: a measurement must notice if it ran against a debug build, or against an
    extension that was swapped while it ran."""
    script = "import os, percore._runtime as r; print(r.__file__)"
    try:
        found = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = found.stdout.strip()
    if found.returncode != 0 or not path:
        return None
    stat = os.stat(path)
    return {"path": path, "bytes": stat.st_size, "mtime": stat.st_mtime}


def extension_problems(before: dict | None, python: str) -> list[str]:
    if before is None:
        return []
    problems = []
    if before["bytes"] > DEBUG_BUILD_BYTES:
        problems.append(
            f"percore extension {before['path']} looks like a debug build ({before['bytes'] >> 20} MB)"
        )
    after = percore_extension(python)
    if after is None or (after["bytes"], after["mtime"]) != (before["bytes"], before["mtime"]):
        problems.append(f"percore extension {before['path']} was rebuilt during the measurement")
    return problems


def measure(contender: Contender, args) -> tuple[dict, dict]:
    """Results per endpoint key, and what happened to the server (command, exit, failures)."""
    is_percore = contender.name.startswith("percore")
    extension = percore_extension(contender.command[0]) if is_percore else None
    port = free_port()
    command = [part.replace(PORT, str(port)) for part in contender.command]
    extra = {key: value.replace(PORT, str(port)) for key, value in contender.env.items()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    results: dict = {}
    server: dict = {"command": command, "failures": [], "killed_is_expected": contender.killed_is_expected}
    if extension:
        server["extension"] = extension
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [*REALTIME, "taskset", "-c", SERVER_CORE, *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            wait_until_serving(port, process, contender.endpoints[0])
            for endpoint in contender.endpoints:
                key = endpoint.key
                try:
                    results[key] = measure_endpoint(port, endpoint, args)
                except (
                    OSError,
                    RuntimeError,
                    http.client.HTTPException,
                    subprocess.CalledProcessError,
                ) as error:
                    server["failures"].append(f"{key}: {error}")
                    print(f"  {contender.name:44} {key:16} FAILED: {error}", flush=True)
                    continue
                rate = results[key]["median_rps"]
                print(f"  {contender.name:44} {key:16} {rate:>10.0f} req/s", flush=True)
                if process.poll() is not None:
                    server["failures"].append(f"server exited with {process.returncode} after {key}")
                    break
        except RuntimeError as error:
            server["failures"].append(str(error))
            print(f"  FAILED: {error}", flush=True)
        finally:
            server.update(stop(process))
            for problem in extension_problems(extension, contender.command[0]):
                server["failures"].append(problem)
                print(f"  PROBLEM: {problem}", flush=True)
            log.seek(0)
            output = log.read()
        if server["failures"] and output.strip():
            server["log_tail"] = output[-3000:]
            print(
                "  server output (tail):\n    " + output[-3000:].strip().replace("\n", "\n    "), flush=True
            )
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 without a kill is graceful too.
    graceful = "" if server["exit"] in (0, -signal.SIGTERM) and not server["killed"] else " (not graceful)"
    print(f"  stopped: exit {server['exit']} after {server['stop_seconds']} s{graceful}", flush=True)
    return results, server


def measure_endpoint(port: int, endpoint: Endpoint, args) -> dict:
    status, body = request(port, endpoint.method, endpoint.path, request_body(endpoint.script), timeout=10)
    if not 200 <= status < 300:
        raise RuntimeError(f"answered {status} before measuring: {body[:300]!r}")
    url = f"http://127.0.0.1:{port}{endpoint.path}"
    connections = endpoint.connections or args.connections
    wrk(url, endpoint.script, args.warmup, connections)
    runs = [wrk(url, endpoint.script, args.duration, connections) for _ in range(args.runs)]
    rates = [run["requests_per_second"] for run in runs]
    return {
        "median_rps": statistics.median(rates),
        "min_rps": min(rates),
        "max_rps": max(rates),
        "p50_ms": statistics.median(run.get("p50_ms", float("nan")) for run in runs),
        "p99_ms": statistics.median(run.get("p99_ms", float("nan")) for run in runs),
        "errors": sum(run["non_2xx"] for run in runs),
        "connections": connections,
        "runs": runs,
        "sample": {"status": status, "bytes": len(body), "body": body[:200].decode("utf-8", "replace")},
    }


PACKAGES = ["fastapi", "starlette", "pydantic", "anyio", "uvicorn", "uvloop", "httptools", "granian", "robyn"]


def machine() -> dict:
    def version(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    def packages(python: str) -> dict:
        script = (
            "import importlib.metadata as m, json, sys\n"
            "found = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try: found[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(found))"
        )
        try:
            output = subprocess.run([python, "-c", script, *PACKAGES], capture_output=True, text=True)
            return json.loads(output.stdout)
        except (OSError, ValueError):
            return {}

    keys = [
        key for key in ("PERCORE_PYTHON_NOGIL", "PERCORE_PYTHON_GIL", "PEERS_PYTHON") if os.environ.get(key)
    ]
    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "uncommitted_changes": bool(status.stdout.strip()),
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
        "pythons": {key: version([os.environ[key], "-VV"]) for key in keys},
        "packages": {key: packages(os.environ[key]) for key in keys},
    }


def problems(results: dict, servers: dict) -> list[str]:
    found = []
    for name, server in servers.items():
        found += [f"{name}: {failure}" for failure in server["failures"]]
        if server.get("killed") and not server.get("killed_is_expected"):
            found.append(f"{name}: did not exit within 10 s of SIGTERM, killed")
    for name, endpoints in results.items():
        for key, r in endpoints.items():
            socket_errors = [run["socket_errors"] for run in r["runs"] if run["socket_errors"]]
            if r["errors"] or socket_errors:
                found.append(
                    f"{name} `{key}`: {r['errors']} non-2xx, socket errors: {socket_errors or 'none'}"
                )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per endpoint (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per endpoint (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="keep contenders whose name contains SUBSTRING (case-insensitive; repeatable: any matches)",
    )
    parser.add_argument("--list", action="store_true", help="list the contenders and exit")
    parser.add_argument("--out", type=Path, default=BENCHES / "results")
    parser.add_argument(
        "--realtime",
        choices=("auto", "on", "off"),
        default="auto",
        help="run server and wrk under SCHED_FIFO (chrt -f 10); auto: when permitted (default)",
    )
    args = parser.parse_args()
    if args.realtime != "off":
        allowed = (
            shutil.which("chrt") is not None and subprocess.run(["chrt", "-f", "10", "true"]).returncode == 0
        )
        if allowed:
            REALTIME[:] = ["chrt", "-f", "10"]
        elif args.realtime == "on":
            print("--realtime on: chrt -f is not permitted here", file=sys.stderr)
            return 1
    args.realtime = "on" if REALTIME else "off"
    chosen = [
        contender
        for contender in contenders()
        if not args.only or any(part.lower() in contender.name.lower() for part in args.only)
    ]
    if args.list:
        for contender in chosen:
            print(contender.name)
        return 0
    if not chosen:
        print(f"no contender matches --only {args.only}; see --list", file=sys.stderr)
        return 1
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/dev bench installs it)", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: one for the server, one for wrk", file=sys.stderr)
        return 1
    results, servers = {}, {}
    for contender in chosen:
        print(f"{contender.name}", flush=True)
        results[contender.name], servers[contender.name] = measure(contender, args)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{info['date'][:10]}-{info['commit']}.json"
    if path.exists():  # a second run (or an --only rerun) on the same day and commit keeps the first
        path = path.with_stem(f"{path.stem}-{info['date'][11:19].replace(':', '')}")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "list")}
    trouble = problems(results, servers)
    document = {
        "machine": info,
        "settings": settings,
        # In the order the tables and charts show them, with the connections each was driven with.
        "endpoints": [
            {"key": e.key, "connections": e.connections or args.connections} for e in APP_ENDPOINTS
        ],
        "results": results,
        "servers": servers,
        "problems": trouble,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    if trouble:
        print("\nproblems (numbers for these are not comparable):")
        print("\n".join(f"- {line}" for line in trouble))
    print(f"\nraw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print("tables and charts: benches/render.py (scripts/dev bench runs it after this)")
    return 1 if trouble else 0


if __name__ == "__main__":
    sys.exit(main())
