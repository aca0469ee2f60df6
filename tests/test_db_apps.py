"""The database benchmark's apps (benches/apps/db_*.py) answer every endpoint correctly, against the real
PostgreSQL that benches/db/pg.sh starts (scripts/dev test starts it and exports PERCORE_TEST_PG_DSN): a
smoke run of what `scripts/dev bench --db` measures, not the benchmark. Served by percore with two loops,
so each loop opens its own pool (on_loop_start / the ASGI lifespan), with every driver installed here."""

import html
import re

import pytest

from .conftest import ServerProcess

APPS = ["benches.apps.db_native:api", "benches.apps.db_starlette:app", "benches.apps.db_fastapi:app"]
# Both on both builds (tests/requirements.txt; asyncpg is built from source on 3.13t).
DRIVERS = ["psycopg", "asyncpg"]

FORTUNES = [
    (1, "fortune: No such file or directory"),
    (2, "A computer scientist is someone who fixes things that aren't broken."),
    (3, "After enough decimal places, nobody gives a damn."),
    (4, "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1"),
    (5, "A computer program does what you tell it to do, not what you want it to do."),
    (6, "Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen"),
    (7, "Any program that runs right is obsolete."),
    (8, "A list is only as strong as its weakest link. — Donald Knuth"),
    (9, "Feature: A bug with seniority."),
    (10, "Computers make very fast, very accurate mistakes."),
    (11, '<script>alert("This should not be displayed in a browser alert box.");</script>'),
    (12, "フレームワークのベンチマーク"),
]
EXTRA = (0, "Additional fortune added at request time.")


@pytest.fixture(scope="module")
def database(pg_dsn):
    """A psycopg connection to the test PostgreSQL, to check what the apps answered against the tables."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def numbers(database, ids) -> dict[int, int]:
    rows = database.execute("SELECT id, randomnumber FROM world WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return dict(rows)


def assert_worlds(database, worlds, count: int) -> None:
    assert isinstance(worlds, list) and len(worlds) == count
    for world in worlds:
        assert set(world) == {"id", "randomNumber"}
        assert 1 <= world["id"] <= 10_000 and 1 <= world["randomNumber"] <= 10_000
    # Every row answered is the row in the table (a row read twice in one request reads the same value).
    stored = numbers(database, {world["id"] for world in worlds})
    assert {world["id"]: world["randomNumber"] for world in worlds} == stored


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("app", APPS)
def test_db_app_answers_every_endpoint(monkeypatch, pg_dsn, database, app, driver):
    monkeypatch.setenv("PERCORE_DB_DSN", pg_dsn)
    monkeypatch.setenv("PERCORE_DB_DRIVER", driver)
    monkeypatch.setenv("PERCORE_DB_POOL", "2")
    # A generous start deadline: importing the pure-Python psycopg (it looks libpq up with ctypes, which
    # spawns ldconfig) and opening the pools can take a while on a loaded machine.
    server = ServerProcess(app, "--loops", "2", "--log-level", "warning").start(timeout=180)
    client = server.client(timeout=60)
    try:
        # /db: one row.
        response = client.get("/db")
        assert response.status == 200, response.body
        assert response.headers["content-type"] == "application/json"
        world = response.json()
        assert isinstance(world, dict)
        assert_worlds(database, [world], 1)

        # /queries?n=: n rows, n clamped to 1..500, anything that is not an integer is 1.
        for query, count in [("", 1), ("?n=1", 1), ("?n=7", 7), ("?n=0", 1), ("?n=-3", 1), ("?n=foo", 1)]:
            response = client.get(f"/queries{query}")
            assert response.status == 200, (query, response.body)
            assert_worlds(database, response.json(), count)
        response = client.get("/queries?n=501")
        assert response.status == 200
        assert_worlds(database, response.json(), 500)

        # /updates?n=: n distinct rows with new numbers, and the new numbers are what the table holds now.
        for query, count in [("?n=5", 5), ("?n=foo", 1), ("?n=501", 500)]:
            before = numbers(database, range(1, 10_001))
            response = client.get(f"/updates{query}")
            assert response.status == 200, (query, response.body)
            worlds = response.json()
            assert len({world["id"] for world in worlds}) == count
            assert_worlds(database, worlds, count)
            after = numbers(database, range(1, 10_001))
            changed = {id_ for id_ in before if before[id_] != after[id_]}
            assert changed <= {world["id"] for world in worlds}  # no other row was touched
            # New numbers are random: among 500 rows, some must differ from what was stored before.
            if count == 500:
                assert len(changed) > 400

        # /fortunes: the 12 rows plus the one added at request time, sorted by message, escaped HTML.
        response = client.get("/fortunes")
        assert response.status == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        page = response.body.decode("utf-8")
        assert page.startswith("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>")
        assert page.endswith("</table></body></html>")
        assert "<tr><th>id</th><th>message</th></tr>" in page
        rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td></tr>", page)
        assert [(int(id_), html.unescape(text)) for id_, text in rows] == sorted(
            [*FORTUNES, EXTRA], key=lambda row: row[1]
        )
        assert "&lt;script&gt;alert(&quot;This should not be displayed" in page
        assert "<script>" not in page
        assert "<td>フレームワークのベンチマーク</td>" in page
    finally:
        client.close()
        code = server.stop(timeout=60)
    assert code == 0, f"server exited with {code}:\n{server.stderr}"
