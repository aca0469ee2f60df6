"""percore's load benchmark: each contender pinned to one core, wrk pinned to the other, same run.

    scripts/dev bench                                  # builds everything, then runs this
    scripts/dev bench --only FastAPI --only RSGI       # a subset (case-insensitive substrings of names)
    scripts/dev bench --only Starlette --endpoint /json --runs 15   # one pair, many rounds
    scripts/dev bench --db                             # the database benchmark (a real PostgreSQL; below)
    python benches/run.py --list                       # with the environment below already set

Environment (scripts/dev bench sets it): PERCORE_PYTHON_NOGIL / PERCORE_PYTHON_GIL — interpreters with a
release build of percore (and FastAPI) installed; HYPER_BASELINE — the benches/hyper-baseline binary;
PEERS_PYTHON — a GIL CPython 3.13 with benches/requirements-peers.txt (uvicorn, Granian, Robyn);
PEERS_PYTHON_NOGIL — a CPython 3.13t with benches/requirements-peers-nogil.txt (uvicorn, Granian). Contenders
whose variable is unset are left out.

Every contender serves the same endpoints (benches/apps/) with one worker, one event loop, one thread,
pinned to core 1. The measurement is interleaved, because throughput on a shared machine drifts by ±20%
over minutes: --runs rounds, and in each round every contender is started, each of its endpoints is
requested once (must answer 2xx), warmed up for --warmup s and measured once for --duration s, and it is
stopped. The contender order changes every round (rotated, and reversed every other round) so that none is
always first, and peers stay next to each other. Each percore ÷ peer ratio is taken within a round (same
machine mood), and the median of those per-round ratios is what the run reports.

Results: a JSON file per run in benches/results/ (machine, versions, commit, every run with its round,
the per-round ratios); benches/render.py turns it into markdown tables and PNG charts beside it
(scripts/dev bench runs both). Conclusions are drawn from ratios within one run, never from absolute numbers.

`--db`: the database benchmark instead (TechEmpower's /db, /queries?n=20, /fortunes, /updates?n=20 from
benches/apps/db*.py against the PostgreSQL in PERCORE_DB_DSN, which scripts/dev bench --db starts with
benches/db/pg.sh pinned to core 0 beside wrk): percore native, percore/uvicorn/Granian ASGI with the
Starlette and FastAPI apps, on both builds; one pool of --db-pool connections per event loop, driver
--db-driver. Results go to <date>-<commit>-db.json and the database block of docs/benchmarks.md. Without
SCHED_FIFO unless `--realtime on` (a FIFO wrk would starve the PostgreSQL beside it; see main()).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
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
# `--tls`: every contender terminates HTTPS with the test certificate (tests/certs; the same file for all),
# wrk speaks TLS to it; contenders that cannot (Robyn, the hyper baseline) are left out.
CERTFILE, KEYFILE = ROOT / "tests" / "certs" / "localhost.crt", ROOT / "tests" / "certs" / "localhost.key"
TLS: list[bool] = []
# `--db`: the database contenders and endpoints (benches/apps/db*.py) instead of the synthetic ones.
DB: list[bool] = []


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
# Two chained dependencies and a pydantic body: only the apps with dependency injection (native, FastAPI).
DEPENDS = Endpoint("POST /depends", BENCHES / "depends.lua")
# A 64 KiB file through StaticFiles (native: served from Rust; the frameworks: Starlette's): not in the RSGI
# and Robyn apps.
STATIC = Endpoint("/static/64k.bin")
STATIC_ENDPOINTS = [*APP_ENDPOINTS, STATIC]
# A 1 MB multipart upload (issue 16: >= 3x FastAPI + python-multipart), on the same two apps.
UPLOAD = Endpoint("POST /upload", BENCHES / "upload.lua")
DEPENDS_ENDPOINTS = [*APP_ENDPOINTS, DEPENDS, STATIC, UPLOAD]
# The hyper baseline does no Python work, so only the endpoints whose work it can do without Python
# (fixed bytes; a 10 ms timer) are measured on it; the tables say "n/a" for the rest.
HYPER_ENDPOINTS = [Endpoint("/json"), SLEEP]
# TechEmpower's database tests (benches/apps/db.py says how each follows TechEmpower's rules).
DB_ENDPOINTS = [Endpoint("/db"), Endpoint("/queries?n=20"), Endpoint("/fortunes"), Endpoint("/updates?n=20")]

HYPER = "hyper (pure Rust, the limit)"
ROBYN = "Robyn"
PERCORE = "percore {}, 1 loop ({})"  # app, build
# `--db`: percore + Starlette once more on asyncio's selector loop (`--loop asyncio`), so that each run
# shows what percore's own event loop (the default) is worth on the same app, interpreter and round.
ASYNCIO_LOOP = " on --loop asyncio"
BUILDS = [("PERCORE_PYTHON_NOGIL", "3.13t"), ("PERCORE_PYTHON_GIL", "3.13 GIL")]
FRAMEWORKS = {"FastAPI": "benches.apps.fastapi_app:app", "Starlette": "benches.apps.starlette_app:app"}
RSGI_APP = "benches.apps.rsgi_app:app"
DB_NATIVE = "benches.apps.db_native:api"
DB_FRAMEWORKS = {"FastAPI": "benches.apps.db_fastapi:app", "Starlette": "benches.apps.db_starlette:app"}


@dataclass(frozen=True)
class PeerStack:
    """The peers' venv of one CPython build (`variable` names its python) and how the peers run on it."""

    variable: str
    loop: str  # uvicorn's and Granian's event loop
    http: str  # uvicorn's HTTP parser
    uvicorn: str  # contender names; {} is the framework
    granian_asgi: str
    granian_rsgi: str
    robyn: bool


# The peers of each percore build, on the same interpreter. uvloop and httptools (and Robyn) have no 3.13t
# wheels, so on 3.13t uvicorn runs on asyncio with the pure-Python h11 and Granian on asyncio; the GIL names
# are kept as they were before the 3.13t peers existed, so earlier runs stay comparable.
PEERS = {
    "3.13t": PeerStack(
        "PEERS_PYTHON_NOGIL",
        loop="asyncio",
        http="h11",
        uvicorn="uvicorn {} (3.13t, h11)",
        granian_asgi="Granian ASGI {} (3.13t, asyncio)",
        granian_rsgi="Granian RSGI (raw, 3.13t)",
        robyn=False,
    ),
    "3.13 GIL": PeerStack(
        "PEERS_PYTHON",
        loop="uvloop",
        http="httptools",
        uvicorn="uvicorn {} (uvloop+httptools)",
        granian_asgi="Granian ASGI {}",
        granian_rsgi="Granian RSGI (raw)",
        robyn=True,
    ),
}


@dataclass
class Contender:
    name: str
    command: list[str]
    endpoints: list[Endpoint]
    env: dict[str, str] = field(default_factory=dict)
    # Robyn 0.88 in single-process mode ignores SIGTERM and SIGINT (measured): it is killed after a short
    # grace period every time, which says nothing about the numbers, so it is not reported as a problem.
    killed_is_expected: bool = False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tls_flags(certificate: str = "--ssl-certfile", key: str = "--ssl-keyfile") -> list[str]:
    return [certificate, str(CERTFILE), key, str(KEYFILE)] if TLS else []


def percore(python: str, app: str, loop: str = "percore") -> list[str]:
    return [
        *(python, "-m", "percore", "serve", app, "--loops", "1", "--log-level", "warning", "--port", PORT),
        *("--loop", loop),
        *tls_flags(),
    ]


def uvicorn(python: str, app: str, stack: PeerStack) -> list[str]:
    return [
        *(python, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", PORT, "--workers", "1"),
        *("--loop", stack.loop, "--http", stack.http, "--log-level", "warning", "--no-access-log"),
        *tls_flags(),
    ]


def granian(python: str, interface: str, app: str, stack: PeerStack) -> list[str]:
    # One worker (a process on the GIL build, a thread of this process on 3.13t) with one Rust runtime
    # thread; the event loop is named rather than left to "auto" (which picks uvloop when installed).
    # HTTP/1 only, like every other contender here.
    return [
        *(python, "-m", "granian", "--interface", interface, "--host", "127.0.0.1", "--port", PORT),
        *("--workers", "1", "--runtime-threads", "1", "--loop", stack.loop, "--http", "1", "--no-ws"),
        *("--no-access-log", "--log-level", "warning"),
        # TLS 1.2 and 1.3 like the others (Granian's default minimum is 1.3; wrk negotiates 1.3 anyway).
        *([*tls_flags("--ssl-certificate"), "--ssl-protocol-min", "tls1.2"] if TLS else []),
        app,
    ]


def robyn(python: str) -> list[str]:
    # --processes 1 keeps Robyn in this process (no fork); --workers 1 gives its Rust server one worker
    # thread; handlers run on the asyncio (uvloop) loop of the main thread. Host and port: ROBYN_HOST/PORT.
    script = str(BENCHES / "apps" / "robyn_app.py")
    return [python, script, "--processes", "1", "--workers", "1", "--disable-openapi", "--log-level", "WARN"]


@functools.cache
def has_driver(python: str) -> bool:
    """Whether `python` can import the --db driver (asyncpg has no cp313t wheel: a venv may lack it)."""
    driver = os.environ.get("PERCORE_DB_DRIVER", "psycopg")
    found = subprocess.run([python, "-c", f"import {driver}"], capture_output=True).returncode == 0
    if not found:
        print(f"left out: {python} cannot import {driver}", file=sys.stderr)
    return found


def db_contenders() -> list[Contender]:
    """`--db`: percore native, and per framework percore, uvicorn and Granian ASGI, on each build (the
    hyper baseline, Granian RSGI and Robyn have no database app); interpreters without the driver are
    left out."""
    found = []
    builds = [
        (python if python and has_driver(python) else None, label, stack)
        for python, label, stack in [(os.environ.get(v), label, PEERS[label]) for v, label in BUILDS]
    ]
    for python, label, _ in builds:
        if python:
            native = percore(python, DB_NATIVE)
            found.append(Contender(PERCORE.format("native", label), native, DB_ENDPOINTS))
    for framework, app in DB_FRAMEWORKS.items():
        for python, label, stack in builds:
            peers = os.environ.get(stack.variable)
            peers = peers if peers and has_driver(peers) else None
            found += framework_contenders(framework, app, python, label, stack, peers, DB_ENDPOINTS)
    return found


def framework_contenders(framework, app, python, label, stack, peers, endpoints) -> list[Contender]:
    """One ASGI app on one interpreter: percore (when that build is there), then uvicorn and Granian ASGI
    from the peers venv (when there is one)."""
    found = []
    if python:
        found.append(Contender(PERCORE.format(framework, label), percore(python, app), endpoints))
    if python and DB and framework == "Starlette":
        name = PERCORE.format(framework, label) + ASYNCIO_LOOP
        found.append(Contender(name, percore(python, app, loop="asyncio"), endpoints))
    if peers:
        found.append(Contender(stack.uvicorn.format(framework), uvicorn(peers, app, stack), endpoints))
        asgi = granian(peers, "asgi", app, stack)
        found.append(Contender(stack.granian_asgi.format(framework), asgi, endpoints))
    return found


def contenders() -> list[Contender]:
    """Every contender the environment provides, grouped so that like-for-like peers sit next to each
    other: per app, each percore build followed by the peers on the same interpreter."""
    if DB:
        return db_contenders()
    found = []
    baseline = os.environ.get("HYPER_BASELINE")
    if baseline and not TLS:
        found.append(Contender(HYPER, [baseline, PORT], HYPER_ENDPOINTS))
    builds = [(os.environ.get(variable), label, PEERS[label]) for variable, label in BUILDS]
    for python, label, stack in builds:
        peers = os.environ.get(stack.variable)
        if python:
            native = percore(python, "benches.apps.native:api")
            found.append(Contender(PERCORE.format("native", label), native, DEPENDS_ENDPOINTS))
        if peers:
            rsgi = granian(peers, "rsgi", RSGI_APP, stack)
            found.append(Contender(stack.granian_rsgi, rsgi, APP_ENDPOINTS))
        if peers and stack.robyn and not TLS:
            env = {"ROBYN_HOST": "127.0.0.1", "ROBYN_PORT": PORT}
            found.append(Contender(ROBYN, robyn(peers), APP_ENDPOINTS, env=env, killed_is_expected=True))
    for framework, app in FRAMEWORKS.items():
        endpoints = DEPENDS_ENDPOINTS if framework == "FastAPI" else STATIC_ENDPOINTS
        for python, label, stack in builds:
            peers = os.environ.get(stack.variable)
            found += framework_contenders(framework, app, python, label, stack, peers, endpoints)
    return found


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(percore contender, the peer it is divided by) among `names`: the same app on the same interpreter,
    or each server's rawest interface (native ÷ Granian RSGI, and Robyn on the GIL build), and native ÷
    FastAPI on uvicorn (the port from FastAPI to the native API)."""
    pairs = []
    for label, stack in PEERS.items():
        for framework in FRAMEWORKS:
            mine = PERCORE.format(framework, label)
            pairs += [(mine, stack.uvicorn.format(framework)), (mine, stack.granian_asgi.format(framework))]
        native = PERCORE.format("native", label)
        pairs.append((native, stack.granian_rsgi))
        if DB:  # no raw-interface peer has a database app: native against the Starlette peer
            pairs.append((native, stack.uvicorn.format("Starlette")))
            # percore's event loop against asyncio's, same server and app
            starlette = PERCORE.format("Starlette", label)
            pairs.append((starlette, starlette + ASYNCIO_LOOP))
        else:  # what a FastAPI user porting to the native API gains (issue 16's POST /depends: >= 5x)
            pairs.append((native, stack.uvicorn.format("FastAPI")))
            # and a Starlette user (issue 16's static 64 KiB file: >= 3x Starlette's StaticFiles on uvicorn)
            pairs.append((native, stack.uvicorn.format("Starlette")))
        if stack.robyn:
            pairs.append((native, ROBYN))
    return [(mine, peer) for mine, peer in pairs if mine in names and peer in names]


def request(port: int, endpoint: Endpoint, timeout: float) -> tuple[int, bytes]:
    """One request as wrk sends it for `endpoint`: its method, path, and its script's body and headers."""
    body = request_body(endpoint.script)
    if TLS:
        context = ssl.create_default_context(cafile=CERTFILE)
        connection = http.client.HTTPSConnection("localhost", port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {**script_headers(endpoint.script), **({"Content-Type": body[1]} if body else {})}
        connection.request(endpoint.method, endpoint.path, body=body and body[0], headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def script_headers(script: Path | None) -> dict[str, str]:
    """The headers a wrk script sets (`wrk.headers["Name"] = "value"`), for the pre-flight request."""
    if script is None:
        return {}
    return dict(re.findall(r'^wrk\.headers\["([^"]+)"\]\s*=\s*"([^"]*)"', script.read_text(), re.M))


def request_body(script: Path | None) -> tuple[bytes, str] | None:
    """(body, content type) the script's requests carry: <script>.json, or the upload's generated body."""
    if script == UPLOAD.script:
        if str(ROOT) not in sys.path:  # run as a script (benches/ is sys.path[0]), not as benches.run
            sys.path.insert(0, str(ROOT))
        from benches.apps.uploads import upload_body

        return upload_body()
    if script is None or not script.with_suffix(".json").exists():
        return None
    return script.with_suffix(".json").read_bytes().rstrip(), "application/json"


def wait_until_serving(port: int, process: subprocess.Popen, endpoint: Endpoint, timeout: float = 30) -> None:
    """Until the server answers HTTP. An open port is not enough: Granian binds before its worker runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            request(port, endpoint, timeout=2)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer HTTP within {timeout:.0f} s")


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def completed_requests(output: str) -> int:
    """The requests wrk completed ("N requests in ..."); 0 when it printed none."""
    completed = re.search(r"(\d+) requests in", output)
    return int(completed.group(1)) if completed else 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of `pid`, every thread, and its direct children (Granian's worker process on
    GIL builds), from /proc: what experiments/server_ab.py and cpu_cost.py divide by completed requests."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    user = system = 0
    for process in [pid, *map(int, children)]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


def parse_wrk(output: str) -> dict:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    result = {"requests_per_second": float(rate.group(1)), "requests": completed_requests(output)}
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


def stop(process: subprocess.Popen, grace: float = 10) -> dict:
    """SIGTERM, up to `grace` s for a graceful exit, then SIGKILL to the whole process group (Granian's
    worker processes included) so that nothing of this contender is left to compete with the next one."""
    started = time.monotonic()
    killed = False
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
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


@dataclass
class Record:
    """What the rounds measured of one contender: per endpoint key its runs (one per round it answered in,
    each tagged with its round) and the pre-flight response of the first round; `server` is the command,
    the percore extension, each start's stop, and the failures."""

    runs: dict[str, list[dict]] = field(default_factory=dict)
    samples: dict[str, dict] = field(default_factory=dict)
    server: dict = field(default_factory=dict)


ERRORS = (OSError, RuntimeError, http.client.HTTPException, subprocess.CalledProcessError)
# Robyn ignores SIGTERM (Contender.killed_is_expected): no point waiting the full grace period every round.
KILL_GRACE_SECONDS = 1


def round_order(chosen: list[Contender], index: int, rounds: int) -> list[Contender]:
    """The contenders in the order round `index` measures them: rotated by an even share of the list per
    round, and reversed every other round, so that no contender is always first and a pair of neighbours
    is measured A-then-B in one round and B-then-A in the next (a drift within a round then evens out)."""
    shift = index * len(chosen) // max(rounds, 1)
    order = chosen[shift:] + chosen[:shift]
    return order[::-1] if index % 2 else order


def measure_round(contender: Contender, args, index: int, record: Record) -> None:
    """Start the contender, measure each endpoint once (`measure_endpoint`), stop it; into `record`."""
    port = free_port()
    command = [part.replace(PORT, str(port)) for part in contender.command]
    extra = {key: value.replace(PORT, str(port)) for key, value in contender.env.items()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    server = record.server
    failures_before = len(server["failures"])

    def fail(message: str) -> None:
        server["failures"].append(f"round {index + 1}: {message}")
        print(f"  {contender.name:44} FAILED: {message}", flush=True)

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
                    run, sample = measure_endpoint(port, endpoint, args)
                except ERRORS as error:
                    fail(f"{key}: {error}")
                    continue
                run["round"] = index + 1
                record.runs.setdefault(key, []).append(run)
                record.samples.setdefault(key, sample)
                rate = run["requests_per_second"]
                print(f"  {contender.name:44} {key:16} {rate:>10.0f} req/s", flush=True)
                if process.poll() is not None:
                    fail(f"server exited with {process.returncode} after {key}")
                    break
        except RuntimeError as error:
            fail(str(error))
        finally:
            grace = KILL_GRACE_SECONDS if contender.killed_is_expected else 10
            stopped = {"round": index + 1, "port": port, **stop(process, grace)}
            server["stops"].append(stopped)
            log.seek(0)
            output = log.read()
        if len(server["failures"]) > failures_before and output.strip():
            server.setdefault("log_tails", []).append(f"round {index + 1}:\n{output[-3000:]}")
            print(
                "  server output (tail):\n    " + output[-3000:].strip().replace("\n", "\n    "), flush=True
            )
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 without a kill is graceful too.
    graceful = stopped["exit"] in (0, -signal.SIGTERM) and not stopped["killed"]
    note = "" if graceful or contender.killed_is_expected else " (not graceful)"
    print(f"  stopped: exit {stopped['exit']} after {stopped['stop_seconds']} s{note}", flush=True)


def measure_endpoint(port: int, endpoint: Endpoint, args) -> tuple[dict, dict]:
    """The pre-flight request (must be 2xx), a --warmup s wrk run, then one measured --duration s run:
    the measured run's wrk figures, and a sample of the pre-flight response."""
    status, body = request(port, endpoint, timeout=10)
    if not 200 <= status < 300:
        raise RuntimeError(f"answered {status} before measuring: {body[:300]!r}")
    url = f"{'https' if TLS else 'http'}://127.0.0.1:{port}{endpoint.path}"
    connections = endpoint.connections or args.connections
    if args.warmup > 0:
        wrk(url, endpoint.script, args.warmup, connections)
    run = wrk(url, endpoint.script, args.duration, connections)
    run["connections"] = connections
    sample = {"status": status, "bytes": len(body), "body": body[:200].decode("utf-8", "replace")}
    return run, sample


def summarise(runs: list[dict], sample: dict) -> dict:
    """One endpoint of one contender over the rounds: median req/s with its min–max, median p50/p99."""
    rates = [run["requests_per_second"] for run in runs]
    return {
        "median_rps": statistics.median(rates),
        "min_rps": min(rates),
        "max_rps": max(rates),
        "p50_ms": statistics.median(run.get("p50_ms", float("nan")) for run in runs),
        "p99_ms": statistics.median(run.get("p99_ms", float("nan")) for run in runs),
        "errors": sum(run["non_2xx"] for run in runs),
        "connections": runs[0]["connections"],
        "runs": runs,
        "sample": sample,
    }


def round_ratios(records: dict[str, Record]) -> list[dict]:
    """Per ratio pair and endpoint: percore's req/s ÷ the peer's in each round both were measured in, and
    the median of those per-round ratios (the figure the run reports: same round, same machine mood)."""
    found = []
    for mine, peer in ratio_pairs(list(records)):
        endpoints = {}
        for key, my_runs in records[mine].runs.items():
            theirs = {run["round"]: run["requests_per_second"] for run in records[peer].runs.get(key, [])}
            per_round = [
                {"round": run["round"], "ratio": round(run["requests_per_second"] / theirs[run["round"]], 4)}
                for run in my_runs
                if theirs.get(run["round"])
            ]
            if per_round:
                median = statistics.median(entry["ratio"] for entry in per_round)
                endpoints[key] = {"median": round(median, 4), "per_round": per_round}
        if endpoints:
            found.append({"percore": mine, "peer": peer, "endpoints": endpoints})
    return found


def settle_database() -> None:
    """--db: the same database state before every contender. /updates leaves ~100,000 dead row versions
    that autovacuum (and the checkpointer, for the pages it dirtied) would otherwise clean up during the
    next contender's /db, on core 0 beside wrk; a VACUUM (which cancels a running autovacuum) and a
    CHECKPOINT here do that work between contenders instead, while nothing is measured."""
    command = ["psql", os.environ["PERCORE_DB_DSN"], "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    command += ["-c", "VACUUM ANALYZE world", "-c", "CHECKPOINT"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"--db: VACUUM/CHECKPOINT between contenders failed: {done.stderr.strip()}")


def measure(chosen: list[Contender], args) -> tuple[dict[str, Record], list[dict]]:
    """Every round (`round_order`), every contender in it (`measure_round`): the records, and per round
    its contender order and duration."""
    records = {}
    for contender in chosen:
        server = {"command": contender.command, "failures": [], "stops": []}
        server["killed_is_expected"] = contender.killed_is_expected
        if contender.name.startswith("percore"):
            server["extension"] = percore_extension(contender.command[0])
        records[contender.name] = Record(server=server)
    rounds = []
    for index in range(args.runs):
        order = round_order(chosen, index, args.runs)
        started = time.monotonic()
        print(f"round {index + 1}/{args.runs}", flush=True)
        for contender in order:
            print(f" {contender.name}", flush=True)
            if DB:
                settle_database()
            measure_round(contender, args, index, records[contender.name])
        seconds = round(time.monotonic() - started)
        rounds.append({"round": index + 1, "order": [c.name for c in order], "seconds": seconds})
        print(f"round {index + 1}/{args.runs} took {seconds // 60} min {seconds % 60} s", flush=True)
    for contender in chosen:
        server = records[contender.name].server
        for problem in extension_problems(server.get("extension"), contender.command[0]):
            server["failures"].append(problem)
            print(f"PROBLEM: {contender.name}: {problem}", flush=True)
    return records, rounds


PACKAGES = [
    "fastapi",
    "starlette",
    "pydantic",
    "anyio",
    "uvicorn",
    "uvloop",
    "httptools",
    "h11",
    "granian",
    "robyn",
    "psycopg",
    "psycopg-c",
    "psycopg-binary",
    "psycopg-pool",
    "asyncpg",
]


def db_drivers(keys: list[str]) -> dict:
    """`--db`: what runs the queries on each interpreter (benches/apps/db.py driver_name: psycopg's C or
    Python implementation, or asyncpg), as the apps will pick it."""
    found = {}
    for key in keys:
        script = "from benches.apps.db import driver_name; print(driver_name())"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        output = subprocess.run([os.environ[key], "-c", script], capture_output=True, text=True, env=env)
        found[key] = output.stdout.strip() or f"not importable: {output.stderr.strip()[-300:]}"
    return found


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

    variables = [variable for variable, _ in BUILDS] + [stack.variable for stack in PEERS.values()]
    keys = [key for key in variables if os.environ.get(key)]
    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    found = {
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
    if DB:
        found["db_drivers"] = db_drivers(keys)
        found["postgresql"] = version(["/usr/lib/postgresql/15/bin/postgres", "--version"])
    return found


def problems(results: dict, servers: dict) -> list[str]:
    found = []
    for name, server in servers.items():
        found += [f"{name}: {failure}" for failure in server["failures"]]
        killed = [stopped["round"] for stopped in server["stops"] if stopped["killed"]]
        if killed and not server["killed_is_expected"]:
            rounds = ", ".join(map(str, killed))
            found.append(f"{name}: did not exit within 10 s of SIGTERM, killed (round {rounds})")
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
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of warm-up per endpoint and round (default 1)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="rounds; each measures every contender once per endpoint, so also the runs per endpoint (default 3)",
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="keep contenders whose name contains SUBSTRING (case-insensitive; repeatable: any matches)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="measure only endpoints whose key contains SUBSTRING (e.g. /json; repeatable: any matches)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="every contender serves HTTPS (tests/certs' certificate) and wrk speaks TLS; Robyn and the hyper "
        "baseline, which cannot, are left out",
    )
    parser.add_argument(
        "--db",
        action="store_true",
        help="the database benchmark (TechEmpower /db, /queries, /fortunes, /updates against PERCORE_DB_DSN)",
    )
    parser.add_argument(
        "--db-driver",
        choices=("psycopg", "asyncpg"),
        default=os.environ.get("PERCORE_DB_DRIVER", "psycopg"),
        help="--db: psycopg 3 async + psycopg_pool (default) or asyncpg",
    )
    parser.add_argument(
        "--db-pool",
        type=int,
        default=8,
        help="--db: connections per pool, one pool per event loop (default 8)",
    )
    parser.add_argument("--list", action="store_true", help="list the contenders and exit")
    parser.add_argument("--out", type=Path, default=BENCHES / "results")
    parser.add_argument(
        "--realtime",
        choices=("auto", "on", "off"),
        default="auto",
        help="run server and wrk under SCHED_FIFO (chrt -f 10); auto: when permitted, except with --db "
        "(default)",
    )
    args = parser.parse_args()
    if args.realtime == "auto" and args.db:
        # PostgreSQL shares core 0 with wrk and is not SCHED_FIFO: a FIFO wrk preempts its backends
        # whenever it is runnable, so the database's share of the core follows each server's response
        # pattern (and a FIFO server is capped at 95% of its core by RT throttling). Measured 2026-12-06,
        # Starlette /db GIL, percore ÷ Granian ASGI: 1.00x with both FIFO, 1.27x with neither; the
        # --db run of 4cd9730 (FIFO) put Granian ahead on 3.13t where CPU-us/request put percore 1.34x
        # ahead (docs/benchmarks.md, "Database benchmark").
        args.realtime = "off"
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
    if args.tls:
        TLS.append(True)
    if args.db:
        DB.append(True)
        # Inherited by every contender (benches/apps/db.py reads them).
        os.environ["PERCORE_DB_DRIVER"], os.environ["PERCORE_DB_POOL"] = args.db_driver, str(args.db_pool)
    chosen = [
        contender
        for contender in contenders()
        if not args.only or any(part.lower() in contender.name.lower() for part in args.only)
    ]
    endpoints = DB_ENDPOINTS if DB else DEPENDS_ENDPOINTS
    wanted = [e for e in endpoints if not args.endpoint or any(part in e.key for part in args.endpoint)]
    for contender in chosen:
        contender.endpoints = [e for e in contender.endpoints if e in wanted]
    chosen = [contender for contender in chosen if contender.endpoints]
    if args.list:
        for contender in chosen:
            print(contender.name)
        return 0
    if not chosen:
        print(
            f"no contender matches --only {args.only} --endpoint {args.endpoint}; see --list", file=sys.stderr
        )
        return 1
    if DB and not os.environ.get("PERCORE_DB_DSN"):
        print("--db needs PERCORE_DB_DSN (scripts/dev bench --db starts benches/db/pg.sh)", file=sys.stderr)
        return 1
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/dev bench installs it)", file=sys.stderr)
        return 1
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: one for the server, one for wrk", file=sys.stderr)
        return 1
    if args.runs < 1 or args.duration < 1 or args.warmup < 0:
        print("--runs and --duration must be at least 1, --warmup at least 0", file=sys.stderr)
        return 1
    records, rounds = measure(chosen, args)
    results = {
        name: {key: summarise(runs, record.samples[key]) for key, runs in record.runs.items()}
        for name, record in records.items()
    }
    servers = {name: record.server for name, record in records.items()}
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{info['date'][:10]}-{info['commit']}{'-db' if DB else ''}.json"
    if path.exists():  # a second run (or an --only rerun) on the same day and commit keeps the first
        path = path.with_stem(f"{path.stem}-{info['date'][11:19].replace(':', '')}")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "list")}
    settings["interleaved"] = True  # --runs rounds of every contender; earlier files: runs back to back
    trouble = problems(results, servers)
    document = {
        "machine": info,
        "settings": settings,
        # In the order the tables and charts show them, with the connections each was driven with.
        "endpoints": [{"key": e.key, "connections": e.connections or args.connections} for e in wanted],
        "results": results,
        # percore ÷ peer per round, and the median of those ratios (benches/render.py's ratio table).
        "ratios": round_ratios(records),
        "rounds": rounds,
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
