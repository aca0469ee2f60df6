"""A watchdog over user code that calls back into the server from where the server reads the app's objects
(tests/apps/hardening_apps.py `reentrant`): a header generator, an int-like status, a dict key whose
`__eq__` runs during a lookup, list header pairs, dict subclasses, a `more_body` with `__bool__`, and a
done-callback whose `__eq__` looks at its task. Each calls `receive()` or `send()` (or the task) from
there. A Rust lock held across such a call deadlocked the loop: the request never got an answer, every
other request on that loop waited forever, and only SIGKILL stopped the server.

Each request must get an answer (any status; a 500 is fine), the one loop must go on serving, and SIGTERM
must stop the server with exit 0 within its shutdown timeout."""

from __future__ import annotations

import http.client

import pytest

APP = "tests.apps.hardening_apps:reentrant"
CASES = [
    f"{case}/{how}"
    for case in ["headers-generator", "status-index", "colliding-key", "header-pair", "dict-subclass"]
    for how in ["receive", "send-start", "send-body"]
] + ["more-body/receive", "more-body/send-body", "task-eq"]
SHUTDOWN_TIMEOUT = 5


def answer(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def test_apps_calling_back_mid_message_get_answers_and_the_loop_keeps_serving(serve):
    server = serve(
        APP, "--loops", "1", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--log-level", "critical"
    )
    for case in CASES * 2:  # the second round on a loop that has been through all of them
        try:
            status = answer(server.port, f"/{case}")
        except TimeoutError:
            server.process.kill()
            server.process.wait()
            pytest.fail(f"/{case} got no answer: the loop is stuck")
        assert status in (200, 500), (case, status)
        assert answer(server.port, "/ok") == 200, case
    assert server.stop(timeout=SHUTDOWN_TIMEOUT + 10) == 0, server.stderr
