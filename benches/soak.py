"""Soak run: a million good requests mixed with bad traffic against one server; memory must stay flat.

    scripts/dev soak                      # native app and the Starlette app, 1M good requests each
    scripts/dev soak --requests 200000 --only native

Good traffic: wrk (pinned to core 0) cycling GET /json, GET /users/{id}?q=, POST /echo (1 KB JSON) over 64
keep-alive connections, in segments of --segment seconds until --requests have been answered; every
one must be a 2xx (wrk's non-2xx and socket-error counts must stay 0). Bad traffic, from this process on
its own connections, all the while: malformed request lines, header sections over 64 KiB, bodies over the
limit, invalid JSON, wrong JSON types, unknown paths, bad percent-encoding, clients that vanish mid-head
or mid-body; each must get its documented answer (400/404/413/422/431 or a clean close). The server is
pinned to core 1 with one loop. Resident memory is read from /proc between segments; after the warm-up
(the first 10% of requests) it may grow by less than 10%.

Results: benches/results/soak-<date>-<commit>.json and a summary on stdout (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from run import Endpoint, wait_until_serving  # benches/run.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import ServerProcess  # noqa: E402 - the tests' server helper (needs pytest, as the venv has)

APPS = {"native": "benches.apps.native:api", "starlette": "benches.apps.starlette_app:app"}
ECHO = (ROOT / "benches" / "echo.json").read_text()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


WRK_SCRIPT = """
local echo = [[%s]]
local requests = {}
-- Formatted in init(): at load time wrk.host is unset and wrk.format would leave out the Host header
-- (an HTTP/1.1 request without Host is a 400, RFC 9112 section 3.2).
function init(args)
  requests[1] = wrk.format("GET", "/json")
  requests[2] = wrk.format("GET", "/users/%%d?q=soak")
  requests[3] = wrk.format("POST", "/echo", {["Content-Type"] = "application/json"}, echo)
end
local i = 0
request = function()
  i = i + 1
  local which = i %% 3 + 1
  if which == 2 then return string.format(requests[2], i) end
  return requests[which]
end
"""


def run_wrk(port: int, seconds: int, script: Path) -> dict:
    command = [
        "taskset",
        "-c",
        "0",
        "wrk",
        "-t1",
        "-c64",
        f"-d{seconds}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed ({finished.returncode}): {finished.stdout}{finished.stderr}")
    output = finished.stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": requests,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
    }


def exchange(port: int, data: bytes, *, read: bool = True, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if not read:
            return b""
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else None


# (name, request bytes, acceptable statuses; None = the server may just close)
# `app_name`: what the app itself answers for a body it cannot use — the native API validates (400/422);
# the Starlette bench app calls json.loads on anything, so its exception is a 500 and a JSON list is
# echoed (200).
def bad_requests(rng: random.Random, app_name: str) -> list[tuple[str, bytes, set[int | None]]]:
    invalid_json, wrong_type = ({400}, {422}) if app_name == "native" else ({500}, {200})
    return [
        ("malformed request line", b"GARBAGE\r\n\r\n", {400}),
        ("bad header byte", b"GET /json HTTP/1.1\r\nHost: x\r\nBad\x00Header: y\r\n\r\n", {400}),
        ("head over 64 KiB", b"GET /json HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", {431}),
        ("unknown path", b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {404}),
        (
            "bad percent-encoding",
            b"GET /users/%zz%ff?q=%G1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            {200},
        ),
        (
            "invalid JSON",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope",
            invalid_json,
        ),
        (
            "JSON of the wrong type",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n[1,2]",
            wrong_type,
        ),
        ("body over the limit", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", {413}),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
            {400, None},
        ),
        (
            "CL and TE together",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            # Read as chunked (RFC 9112): an empty body, which the native API answers 422 (required body).
            {*invalid_json, *wrong_type, None},
        ),
        (
            "random bytes",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n",
            {400, None},
        ),
    ]


VANISHING = [
    ("vanishes mid-head", b"GET /json HTTP/1.1\r\nHost: x\r\nX-Partial: "),
    (
        "vanishes mid-body",
        b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":',
    ),
]


class BadTraffic(threading.Thread):
    """Sends bad requests in a loop until stopped; counts answers that were not the documented ones."""

    def __init__(self, port: int, app_name: str, seed: int = 1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.app_name = app_name
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.sent = 0
        self.unexpected: list[str] = []

    def run(self) -> None:
        try:
            self._send_until_stopped()
        except BaseException as error:  # a dead generator must fail the soak, not pass it quietly
            self.unexpected.append(f"bad-traffic generator crashed: {error!r}")
            raise

    def _send_until_stopped(self) -> None:
        while not self.stop.is_set():
            for name, data, allowed in bad_requests(self.rng, self.app_name):
                try:
                    status = status_of(exchange(self.port, data))
                except OSError as error:
                    status = None if isinstance(error, ConnectionError) else -1
                if status not in allowed and len(self.unexpected) < 20:
                    self.unexpected.append(f"{name}: got {status}, expected {sorted(map(str, allowed))}")
                self.sent += 1
            for _, data in VANISHING:
                try:
                    exchange(self.port, data, read=False)
                except OSError:
                    pass
                self.sent += 1
            # ~250 connections/s: enough to interleave with every wrk segment, few enough that
            # TIME_WAIT sockets never exhaust the ephemeral ports wrk needs.
            time.sleep(0.05)


def soak(app_name: str, python: str, total: int, segment: int) -> dict:
    server = ServerProcess(
        APPS[app_name],
        *("--loops", "1", "--log-level", "error", "--max-body-size", "1048576"),
        python=python,
        prefix=("taskset", "-c", "1"),
        stop_timeout=20,
    ).start()  # its stderr to a file: a pipe read only on failure would fill up with the app's tracebacks
    port = server.port
    try:
        try:
            wait_until_serving(port, server.process, Endpoint("/json"))
        except RuntimeError as error:
            raise RuntimeError(f"{error}: {server.read_stderr()}") from None
        script = Path(f"/tmp/percore-soak-{os.getpid()}.lua")
        script.write_text(WRK_SCRIPT % ECHO)
        bad = BadTraffic(port, app_name)
        bad.start()
        samples = [{"requests": 0, "rss": rss_bytes(server.process.pid), "seconds": 0.0}]
        done, non_2xx, socket_errors, started = 0, 0, 0, time.monotonic()
        while done < total:
            result = run_wrk(port, segment, script)
            done += result["requests"]
            non_2xx += result["non_2xx"]
            socket_errors += result["socket_errors"]
            samples.append(
                {
                    "requests": done,
                    "rss": rss_bytes(server.process.pid),
                    "seconds": round(time.monotonic() - started, 1),
                    "rps": result["rps"],
                }
            )
            print(
                f"  {app_name}: {done:>9,} good requests, RSS {samples[-1]['rss'] / 2**20:.1f} MiB, {result['rps']:,.0f} req/s",
                flush=True,
            )
        bad.stop.set()
        bad.join(timeout=30)
        alive = server.process.poll() is None
        warm = next(s for s in samples if s["requests"] >= total * 0.1)
        final = samples[-1]
        growth = final["rss"] / warm["rss"] - 1
        return {
            "app": app_name,
            "good_requests": done,
            "non_2xx": non_2xx,
            "socket_errors": socket_errors,
            "bad_requests": bad.sent,
            "unexpected_bad_answers": bad.unexpected,
            "server_alive": alive,
            "rss_after_warmup": warm["rss"],
            "rss_final": final["rss"],
            "rss_growth": round(growth, 4),
            "rss_peak": max(s["rss"] for s in samples),
            "samples": samples,
            "passed": alive
            and bad.sent > 0
            and non_2xx == 0
            and socket_errors == 0
            and not bad.unexpected
            and growth < 0.10,
        }
    finally:
        try:
            server.stop()
        except AssertionError as error:  # killed after 20 s: say so, without hiding the run's own outcome
            print(f"  {app_name}: {error}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1_000_000, help="good requests per app (default 1M)")
    parser.add_argument(
        "--segment", type=int, default=10, help="seconds per wrk segment (RSS sampled between)"
    )
    parser.add_argument("--only", choices=sorted(APPS), action="append")
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    python = os.environ.get("PERCORE_PYTHON_NOGIL", sys.executable)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    version = subprocess.run(
        [
            python,
            "-c",
            "import sys; print(sys.version.split()[0], 'GIL' if sys._is_gil_enabled() else 'free-threaded')",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    runs = []
    for app_name in arguments.only or sorted(APPS):
        print(f"soak: {app_name} on Python {version}, {arguments.requests:,} good requests", flush=True)
        runs.append(soak(app_name, python, arguments.requests, arguments.segment))
    date = datetime.date.today().isoformat()
    out = arguments.out or ROOT / "benches" / "results" / f"soak-{date}-{commit}.json"
    out.write_text(
        json.dumps({"date": date, "commit": commit, "python": version, "runs": runs}, indent=1) + "\n"
    )
    print(
        "\n| app | good requests | non-2xx | socket errors | bad requests | unexpected answers | RSS after warm-up | final RSS | growth | passed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run['app']} | {run['good_requests']:,} | {run['non_2xx']} | {run['socket_errors']} | {run['bad_requests']:,} | "
            f"{len(run['unexpected_bad_answers'])} | {run['rss_after_warmup'] / 2**20:.1f} MiB | {run['rss_final'] / 2**20:.1f} MiB | "
            f"{run['rss_growth']:+.1%} | {'yes' if run['passed'] else 'NO'} |"
        )
        for line in run["unexpected_bad_answers"]:
            print(f"    unexpected: {line}")
    print(f"\nwritten {out}")
    return 0 if all(run["passed"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
