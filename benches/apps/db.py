"""The database work behind the TechEmpower-style endpoints (/db, /queries, /fortunes, /updates), shared by
every database benchmark app (apps/db_native.py, apps/db_starlette.py, apps/db_fastapi.py) so each contender
runs the same queries through the same driver and the same template.

Configuration, from the environment (benches/run.py --db and tests/test_db_apps.py set it):
PERCORE_DB_DSN — the PostgreSQL to use (benches/db/pg.sh prints it); PERCORE_DB_DRIVER — `psycopg`
(default: psycopg 3 async with psycopg_pool; its C implementation where it is installed, see
`driver_name()`) or `asyncpg`; PERCORE_DB_POOL — connections per pool (default 8).

A pool belongs to the event loop it was opened on (its sockets are registered with that loop's selector),
so each loop opens its own: `open_database()` is called from percore's `on_loop_start` hook or an ASGI
lifespan, which percore runs once per loop and uvicorn and Granian once per worker.

TechEmpower's rules, as implemented here: ids are uniformly random in 1..10000; `/queries` and `/updates`
take n, clamped to 1..500 (a missing or non-integer n is 1); each row of /queries and /updates is its own
SELECT (no IN (...)); the updates of one request are sent as one batch (executemany), in id order so
that concurrent requests cannot deadlock; /fortunes adds a fortune at request time, sorts by message and
escapes every message in the HTML.
"""

from __future__ import annotations

import html
import os
import random

ROWS = 10_000
MAX_QUERIES = 500
EXTRA_FORTUNE = (0, "Additional fortune added at request time.")
SELECT_WORLD = "SELECT id, randomnumber FROM world WHERE id = {}"
UPDATE_WORLD = "UPDATE world SET randomnumber = {} WHERE id = {}"
SELECT_FORTUNES = "SELECT id, message FROM fortune"
HTML_TYPE = "text/html; charset=utf-8"


def query_count(raw: str | None) -> int:
    """TechEmpower's n: an integer clamped to 1..500; missing or not an integer is 1."""
    try:
        n = int(raw) if raw is not None else 1
    except ValueError:
        return 1
    return min(max(n, 1), MAX_QUERIES)


def random_id() -> int:
    return random.randint(1, ROWS)


def render_fortunes(rows: list[tuple[int, str]]) -> str:
    """TechEmpower's fortunes page: the rows plus one added now, sorted by message, every message escaped
    (the same hand-built template for every contender)."""
    rows = sorted([*rows, EXTRA_FORTUNE], key=lambda row: row[1])
    cells = "".join(f"<tr><td>{id_}</td><td>{html.escape(message)}</td></tr>" for id_, message in rows)
    return (
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>"
        f"<tr><th>id</th><th>message</th></tr>{cells}</table></body></html>"
    )


def driver_name() -> str:
    """What runs the queries: `psycopg (c)` / `psycopg (binary)` (the C implementation, from psycopg-c or
    psycopg-binary) / `psycopg (python)`, or `asyncpg`."""
    if os.environ.get("PERCORE_DB_DRIVER", "psycopg") == "asyncpg":
        return "asyncpg"
    import psycopg

    return f"psycopg ({psycopg.pq.__impl__})"


class Psycopg:
    """psycopg 3 async with a psycopg_pool.AsyncConnectionPool of fixed size."""

    def __init__(self, dsn: str, size: int) -> None:
        from psycopg_pool import AsyncConnectionPool

        # Autocommit, as asyncpg: otherwise every request pays a BEGIN and a COMMIT round trip.
        self.pool = AsyncConnectionPool(
            dsn, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        self.select = SELECT_WORLD.format("%s")
        self.update = UPDATE_WORLD.format("%s", "%s")

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def world(self) -> dict:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(self.select, (random_id(),), prepare=True)
            id_, number = await cursor.fetchone()
        return {"id": id_, "randomNumber": number}

    async def worlds(self, n: int) -> list[dict]:
        found = []
        async with self.pool.connection() as connection:
            for _ in range(n):
                cursor = await connection.execute(self.select, (random_id(),), prepare=True)
                id_, number = await cursor.fetchone()
                found.append({"id": id_, "randomNumber": number})
        return found

    async def updates(self, n: int) -> list[dict]:
        ids = sorted(random.sample(range(1, ROWS + 1), n))
        found = []
        async with self.pool.connection() as connection:
            for id_ in ids:
                cursor = await connection.execute(self.select, (id_,), prepare=True)
                await cursor.fetchone()
                found.append({"id": id_, "randomNumber": random_id()})
            async with connection.cursor() as cursor:
                await cursor.executemany(self.update, [(w["randomNumber"], w["id"]) for w in found])
        return found

    async def fortunes(self) -> list[tuple[int, str]]:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(SELECT_FORTUNES, prepare=True)
            return await cursor.fetchall()


class Asyncpg:
    """asyncpg with its own pool (asyncpg.create_pool) of fixed size."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size, self.pool = dsn, size, None
        self.select = SELECT_WORLD.format("$1")
        self.update = UPDATE_WORLD.format("$1", "$2")

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.dsn, min_size=self.size, max_size=self.size)

    async def close(self) -> None:
        await self.pool.close()

    async def world(self) -> dict:
        async with self.pool.acquire() as connection:
            id_, number = await connection.fetchrow(self.select, random_id())
        return {"id": id_, "randomNumber": number}

    async def worlds(self, n: int) -> list[dict]:
        found = []
        async with self.pool.acquire() as connection:
            for _ in range(n):
                id_, number = await connection.fetchrow(self.select, random_id())
                found.append({"id": id_, "randomNumber": number})
        return found

    async def updates(self, n: int) -> list[dict]:
        ids = sorted(random.sample(range(1, ROWS + 1), n))
        found = []
        async with self.pool.acquire() as connection:
            for id_ in ids:
                await connection.fetchrow(self.select, id_)
                found.append({"id": id_, "randomNumber": random_id()})
            await connection.executemany(self.update, [(w["randomNumber"], w["id"]) for w in found])
        return found

    async def fortunes(self) -> list[tuple[int, str]]:
        async with self.pool.acquire() as connection:
            return [tuple(row) for row in await connection.fetch(SELECT_FORTUNES)]


async def open_database() -> Psycopg | Asyncpg:
    """A pool for the running event loop, opened (every connection made) before it serves."""
    dsn = os.environ.get("PERCORE_DB_DSN")
    if not dsn:
        raise RuntimeError("PERCORE_DB_DSN is not set (benches/db/pg.sh start prints one)")
    size = int(os.environ.get("PERCORE_DB_POOL", "8"))
    driver = os.environ.get("PERCORE_DB_DRIVER", "psycopg")
    if driver not in ("psycopg", "asyncpg"):
        raise RuntimeError(f"PERCORE_DB_DRIVER must be psycopg or asyncpg, not {driver!r}")
    database = (Asyncpg if driver == "asyncpg" else Psycopg)(dsn, size)
    await database.open()
    return database
