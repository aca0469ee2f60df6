"""`runtime serve` as a user types it: the banner, and one clear line for every start-up mistake."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from .conftest import FREE_THREADED, ServerProcess, assert_one_clear_line, run_cli


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module:api", "cannot import module 'no_such_module'"),
        ("tests.apps.runtime_app:nope", "has no attribute 'nope'"),
        ("tests.apps.runtime_app:asyncio", "neither a percore.App nor an ASGI application"),
        ("tests.apps.runtime_app", "expected MODULE:ATTR"),
        (
            "tests.apps.factory_apps:create_app",
            "takes no arguments: if it returns the app, serve it with --factory",
        ),
    ],
)
def test_a_bad_app_target_exits_with_one_line(target, fragment):
    assert_one_clear_line(run_cli("serve", target), fragment)


def test_factory_serves_the_app_the_function_returns(serve):
    native = serve("tests.apps.factory_apps:create_app", "--factory", "--loops", "2")
    # Called once per process, not once per loop.
    assert native.get("/made").json() == {"by": "factory", "apps_created": 1}
    asgi = serve("tests.apps.factory_apps:create_starlette", "--factory", "--loops", "2")
    assert asgi.get("/made").text == "made by a factory"


@pytest.mark.parametrize(
    ("factory", "fragments"),
    [
        (
            "broken_factory",
            ("'tests.apps.factory_apps:broken_factory' failed", "RuntimeError", "URL is not set"),
        ),
        ("forgets_to_return", ("returned None",)),
        ("not_callable", ("--factory", "is not callable", "int")),
        ("async_factory", ("--factory", "async def", "plain function")),
    ],
)
def test_a_failing_factory_exits_with_one_line(factory, fragments):
    assert_one_clear_line(run_cli("serve", f"tests.apps.factory_apps:{factory}", "--factory"), *fragments)


def test_zero_loops_exits_with_one_line():
    assert_one_clear_line(run_cli("serve", "tests.apps.runtime_app:api", "--loops", "0"), "--loops")


def test_routing_policies_and_the_shutdown_default_come_from_the_runtime():
    from percore import _runtime, _supervisor

    assert _runtime.ROUTING_POLICIES == ("local", "round-robin", "least-loaded")
    help_text = run_cli("serve", "--help").stdout
    assert "{" + ",".join(_runtime.ROUTING_POLICIES) + "}" in help_text
    assert _supervisor.DEFAULT_SHUTDOWN_TIMEOUT == _runtime.DEFAULT_SHUTDOWN_TIMEOUT == 5.0


def test_a_busy_port_exits_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "tests.apps.runtime_app:api", "--port", str(port))
    assert_one_clear_line(result, "already in use", str(port))


def test_the_banner_says_what_is_running():
    server = ServerProcess("tests.apps.runtime_app:api", "--loops", "2", "--routing", "least-loaded").start()
    assert server.get("/where").status == 200
    time.sleep(0.2)  # the banner is logged just after the listeners open
    code = server.stop()
    assert code == 0
    banner = next((line for line in server.stderr.splitlines() if "loop(s)" in line), server.stderr)
    assert sys.version.split()[0] in banner
    assert ("free-threaded build" if FREE_THREADED else "GIL build") in banner
    assert ("GIL disabled" if FREE_THREADED else "GIL enabled") in banner
    assert "2 loop(s)" in banner
    assert "routing least-loaded" in banner
    assert f"http://127.0.0.1:{server.port}" in banner


def test_python_dash_m_and_console_script_are_the_same_command():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout


def test_the_access_log_is_opt_in_and_has_one_line_per_request():
    import re

    quiet = ServerProcess("tests.apps.runtime_app:api", "--loops", "1").start()
    assert quiet.get("/where").status == 200
    assert quiet.stop() == 0
    assert '"GET /where' not in quiet.stderr

    server = ServerProcess("tests.apps.runtime_app:api", "--loops", "2", "--access-log").start()
    client = server.client()
    assert client.get("/where?x=1").status == 200
    assert client.get("/no/such/path").status == 404
    time.sleep(0.2)  # the log is written by its own thread
    assert server.stop() == 0
    lines = [line for line in server.stderr.splitlines() if '"GET ' in line]
    assert len(lines) == 2, server.stderr
    common_log = r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET (\S+) HTTP/1\.1" (\d{3}) (\d+|-) \d+us$'
    parsed = [re.match(common_log, line).groups() for line in lines]
    assert parsed[0][:2] == ("/where?x=1", "200")
    assert parsed[1] == ("/no/such/path", "404", "9")
