"""Smoke test of an installed percore - a wheel in a fresh venv, not the source tree. `scripts/dev test`
builds the wheels, installs each into a fresh venv and runs this file with that venv's python, from a
temporary directory outside the repository (pytest does not collect it: it is not a test_*.py file):

    VENV/bin/python wheel_smoke.py --source-tree REPO

It checks that percore is imported from the venv's site-packages (not from REPO) with its stubs, that
`runtime --version` and `python -m percore --version` name the interpreter, and that `runtime serve` serves
a native app and a plain ASGI app (one request each) and stops cleanly on SIGINT and on SIGTERM (exit 0).
Exit code 0 when all passed, 1 (with the reason) at the first failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

NATIVE_APP = """
import percore

api = percore.App()


@api.get("/hello/{name}")
async def hello(name: str) -> dict[str, str]:
    return {"hello": name}
"""

# A bare ASGI 3 app with its lifespan, nothing imported: the fresh venv has percore alone.
ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = ("asgi " + scope["path"]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""

DEADLINE = 120.0  # seconds for a server to come up, answer and stop: generous, the CI machine is busy


class SmokeFailure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def installed_package(source_tree: Path | None) -> None:
    import percore

    location = Path(percore.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(location.parent == site, f"percore imported from {location}, not from site-packages {site}")
    if source_tree is not None:
        check(
            source_tree.resolve() not in location.parents,
            f"percore imported from the source tree: {location}",
        )
    for name in ("py.typed", "_runtime.pyi"):
        check((location / name).is_file(), f"the installed package has no {name}")
    print(f"smoke: percore {percore.__version__} installed at {location}")


def version_output(runtime: Path) -> None:
    for command in ([str(runtime), "--version"], [sys.executable, "-m", "percore", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE)
        check(result.returncode == 0, f"{command} exited {result.returncode}: {result.stderr}")
        check(
            sys.executable in result.stdout and "GIL:" in result.stdout,
            f"{command} printed {result.stdout!r}",
        )
    print("smoke: --version names", sys.executable)


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def serve_once(
    runtime: Path, workdir: Path, target: str, path: str, expected: bytes | dict, stop: signal.Signals
) -> None:
    """Serves ``target``, GETs ``path`` (the body must be ``expected``, or that JSON), sends ``stop``."""
    port = free_port()
    command = [str(runtime), "serve", target, "--port", str(port), "--loops", "2"]
    # Output to a file, read at the end: a pipe nobody reads while the server runs could fill and stall it.
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)

        def output() -> str:
            log.seek(0)
            return log.read()

        try:
            deadline = time.monotonic() + DEADLINE
            answer = None
            while answer is None:
                if server.poll() is not None:
                    raise SmokeFailure(f"{target}: the server exited {server.returncode}:\n{output()}")
                check(
                    time.monotonic() < deadline, f"{target}: no answer on port {port} within {DEADLINE:.0f} s"
                )
                try:
                    answer = get(port, path)
                except OSError:
                    time.sleep(0.2)
            status, body = answer
            got = json.loads(body) if isinstance(expected, dict) and status == 200 else body
            check(
                (status, got) == (200, expected),
                f"{target}: GET {path} answered {answer}, expected {expected!r}",
            )
            server.send_signal(stop)
            try:
                server.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                raise SmokeFailure(f"{target}: still running {DEADLINE:.0f} s after {stop.name}") from None
            text = output()
            check(
                server.returncode == 0, f"{target}: exit code {server.returncode} after {stop.name}:\n{text}"
            )
            check("Traceback" not in text, f"{target}: a traceback in the server's output:\n{text}")
            print(f"smoke: {target} answered GET {path} and stopped on {stop.name} (exit 0)")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-tree", type=Path, help="percore must not be imported from here")
    arguments = parser.parse_args()
    runtime = Path(sys.executable).parent / "runtime"
    try:
        check(runtime.is_file(), f"no `runtime` console script beside {sys.executable}")
        installed_package(arguments.source_tree)
        version_output(runtime)
        with tempfile.TemporaryDirectory(prefix="percore-smoke-") as directory:
            workdir = Path(directory)
            (workdir / "smoke_native.py").write_text(NATIVE_APP)
            (workdir / "smoke_asgi.py").write_text(ASGI_APP)
            serve_once(
                runtime, workdir, "smoke_native:api", "/hello/wheel", {"hello": "wheel"}, signal.SIGINT
            )
            serve_once(runtime, workdir, "smoke_asgi:app", "/ping", b"asgi /ping", signal.SIGTERM)
    except SmokeFailure as failure:
        print(f"smoke: FAILED on {sys.executable}: {failure}", file=sys.stderr)
        return 1
    print(
        f"smoke: passed on {sys.version.split()[0]} ({'free-threaded' if sysconfig.get_config_var('Py_GIL_DISABLED') else 'GIL'} build)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
