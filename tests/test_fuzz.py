"""A seeded raw-socket fuzzer against the real server (tests/http_mutations.py): a few hundred malformed,
smuggling-shaped and truncated requests per app. Every reply must be well-formed HTTP with a 4xx (or a 2xx
/3xx where the mutation left a valid request), or a clean close; never a 5xx, a hang or a crash. After each
batch a normal request on a fresh connection is answered and the process is alive.

The longer run: `python -m tests.http_mutations APP --seconds 600` (docs/limits.md, "Fuzzing")."""

from __future__ import annotations

import pytest

from .http_mutations import MUTATORS, SEEDS, BadReply, cases, judge

CASES = 300
BATCH = 50

APPS = {
    "native": ("tests.apps.native_api:api", "/users/7", 200),
    "asgi": ("tests.apps.fastapi_app:app", "/json", 200),
}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_mutated_requests_get_a_4xx_or_a_clean_close_and_the_server_keeps_serving(serve, kind):
    app, healthy_path, healthy_status = APPS[kind]
    # Two loops with hand-off, so bad requests also cross threads. Logging is off: error tracebacks would
    # fill the stderr pipe the fixture reads only at the end (a Rust panic still prints).
    server = serve(app, "--loops", "2", "--routing", "round-robin", "--log-level", "critical")
    failures: list[str] = []
    seen: set[str] = set()
    statuses: set[int] = set()
    for number, (name, data) in enumerate(cases(seed=20261122, count=CASES, seeds=SEEDS[kind]), 1):
        seen.add(name.split("+")[0])
        try:
            statuses.update(judge(server.port, data))
        except BadReply as error:
            failures.append(f"case {number} ({name}): {data[:200]!r}\n    {error}")
        if number % BATCH == 0:
            assert server.process.poll() is None, f"the server died after case {number}:\n{server.stderr}"
            assert server.get(healthy_path).status == healthy_status, f"not serving after case {number}"
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:10])
    assert seen == set(MUTATORS)
    # The fuzzer reached both sides: requests refused at the HTTP layer and requests that got through.
    assert {400, 431} <= statuses and statuses & {200, 201}, statuses
    assert server.stop() == 0
    assert "panicked" not in server.stderr, server.stderr


def test_query_strings_are_decoded_strictly_over_the_wire(serve):
    # Found by fuzz/fuzz_targets/query.rs: a sign after `%` was taken as a hex digit ("%+4" was 0x04).
    server = serve("tests.apps.native_api:api", "--loops", "1")
    client = server.client()
    for query, decoded in [
        ("%+41", "% 41"),
        ("%2B41", "+41"),
        ("a%zz", "a%zz"),
        ("%C3%A9", "é"),
        ("%ff", "\ufffd"),
    ]:
        response = client.get(f"/search?q={query}")
        assert (response.status, response.json()["q"]) == (200, decoded), query
    client.close()
