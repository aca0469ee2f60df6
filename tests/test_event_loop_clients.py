"""Real client libraries on percore's event loop (``percore.new_event_loop()``, docs/event-loop.md), against
real local servers: psycopg 3 (a connection and its pool) and asyncpg against the test PostgreSQL
(benches/db/pg.sh, PERCORE_TEST_PG_DSN: the ``pg_dsn`` fixture skips without it), the ``websockets``
client against a ``runtime serve`` subprocess and against the ``websockets`` package's own server, and
httpx against the same subprocess.

Every test runs once on percore's loop and once on asyncio's (``asyncio.SelectorEventLoop``) with the same
assertions, so what is asserted is asyncio's behaviour: what passes on asyncio's loop must pass on ours
(issue #13: the loop is a drop-in). Nothing waits on a clock: conditions are polled with a generous
deadline, and the short timeouts below only trigger a cancellation, they are never measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import percore
import pytest

from .conftest import FREE_THREADED, ServerProcess

LOOPS = {"percore": percore.new_event_loop, "asyncio": asyncio.SelectorEventLoop}
STARLETTE = "tests.apps.starlette_app:app"  # /ws: echo text, reverse bytes, "close please" -> 4001
#: How long a polled condition may take before the test fails: generous, the machine is small and busy.
DEADLINE = 60.0

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=list(LOOPS))
def run(request) -> Iterator[Run]:
    """run(coroutine) on a new loop of the parametrised kind, through ``asyncio.Runner`` (closed after)."""
    with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
        yield runner.run
        if request.param == "percore":
            assert isinstance(runner.get_loop(), percore.EventLoop)


async def until(condition: Callable[[], Coroutine[Any, Any, bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def equals(value: Coroutine[Any, Any, Any], expected: Any) -> bool:
    return await value == expected


def tagged(sql: str) -> tuple[str, str]:
    """`sql` with a unique comment, and the comment: finds the statement's backend in pg_stat_activity."""
    tag = f"percore-test-{uuid.uuid4().hex}"
    return f"{sql} /* {tag} */", tag


# The statement's backends other than the asking one (whose own query contains the tag too).
ACTIVE_WITH_TAG = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
    "AND strpos(query, {}) > 0"
)


async def transactions(conn: Any, unique_violation: type[Exception]) -> None:
    """On a psycopg or asyncpg connection (the same `execute` and `transaction()`): a temporary table
    `notes` where a transaction commits row 1, one rolled back by an exception loses row 2, and a savepoint
    rolled back by a failed statement (`unique_violation`) leaves its transaction going on to add row 3."""
    await conn.execute("CREATE TEMP TABLE notes (id int PRIMARY KEY, text text)")
    async with conn.transaction():
        await conn.execute("INSERT INTO notes VALUES (1, 'kept')")
    with pytest.raises(ZeroDivisionError):
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES (2, 'rolled back by the exception')")
            1 / 0  # noqa: B018
    async with conn.transaction():
        with pytest.raises(unique_violation):
            async with conn.transaction():  # a savepoint
                await conn.execute("INSERT INTO notes VALUES (1, 'duplicate')")
        await conn.execute("INSERT INTO notes VALUES (3, 'after the savepoint')")


# --- psycopg 3 -----------------------------------------------------------------------------------------------


def test_psycopg_runs_its_c_implementation_where_it_has_a_wheel(record_property):
    # psycopg-binary (tests/requirements-gil.txt) has no free-threaded wheel: 3.13t runs the pure-Python
    # implementation over the system libpq. The async tests below run on whichever is installed.
    psycopg = pytest.importorskip("psycopg")
    record_property("psycopg_impl", psycopg.pq.__impl__)
    assert psycopg.pq.__impl__ == ("python" if FREE_THREADED else "binary")


def test_psycopg_queries_and_transactions(run, pg_dsn):
    import psycopg

    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cursor = await conn.execute("SELECT count(*), min(id), max(id) FROM world")
            assert await cursor.fetchone() == (10_000, 1, 10_000)
            cursor = await conn.execute(
                "SELECT id, randomnumber FROM world WHERE id = ANY(%s) ORDER BY id", ([3, 1, 2],)
            )
            rows = await cursor.fetchall()
            assert [row[0] for row in rows] == [1, 2, 3]
            assert all(1 <= number <= 10_000 for _, number in rows)
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT %s::text, %s::int, %s::bytea", ("héllo", 42, b"\x00\xff"))
                assert await cursor.fetchone() == ("héllo", 42, b"\x00\xff")
            await conn.commit()

            await transactions(conn, psycopg.errors.UniqueViolation)
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES (4, 'rolled back explicitly')")
                raise psycopg.Rollback()
            cursor = await conn.execute("SELECT id, text FROM notes ORDER BY id")
            assert await cursor.fetchall() == [(1, "kept"), (3, "after the savepoint")]

    run(main())


def test_psycopg_listen_notify_is_delivered_while_awaiting(run, pg_dsn):
    import psycopg

    channel = f"percore_{uuid.uuid4().hex}"
    payloads = [f"message {n}" for n in range(3)]

    async def main():
        async with (
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as listener,
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as notifier,
        ):
            await listener.execute(f"LISTEN {channel}")
            listening = asyncio.Event()

            async def listen() -> list[str]:
                received = []
                listening.set()  # no await before the generator waits on the socket (add_reader)
                async for notify in listener.notifies(stop_after=len(payloads)):
                    assert notify.channel == channel
                    received.append(notify.payload)
                return received

            task = asyncio.create_task(listen())
            await listening.wait()
            for payload in payloads:
                await notifier.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            async with asyncio.timeout(DEADLINE):
                assert await task == payloads

    run(main())


def test_psycopg_a_long_query_is_cancelled_in_the_server(run, pg_dsn):
    import psycopg

    async def main():
        async with (
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn,
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as monitor,
        ):

            async def running(tag: str) -> int:
                cursor = await monitor.execute(ACTIVE_WITH_TAG.format("%s"), (tag,))
                return (await cursor.fetchone())[0]

            # asyncio.timeout cancels the awaiting task: psycopg sends PostgreSQL a cancel request.
            sql, tag = tagged("SELECT pg_sleep(600)")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await conn.execute(sql)
            await until(lambda: equals(running(tag), 0), "the timed-out pg_sleep still runs in the server")
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)

            # conn.cancel_safe() from another task, while the query runs.
            sql, tag = tagged("SELECT pg_sleep(600)")
            query = asyncio.create_task(conn.execute(sql))
            await until(lambda: equals(running(tag), 1), "the pg_sleep never started")
            await conn.cancel_safe()
            with pytest.raises(psycopg.errors.QueryCanceled):
                await query
            await until(lambda: equals(running(tag), 0), "the cancelled pg_sleep still runs in the server")
            assert await (await conn.execute("SELECT 2")).fetchone() == (2,)

    run(main())


def test_psycopg_pool_serves_concurrent_tasks(run, pg_dsn):
    from psycopg_pool import AsyncConnectionPool

    async def main():
        async with AsyncConnectionPool(
            pg_dsn, min_size=2, max_size=4, open=False, kwargs={"autocommit": True}
        ) as pool:
            await pool.wait(timeout=DEADLINE)
            # Four tasks hold a connection each at the same time: the barrier lets none go before all are in.
            barrier = asyncio.Barrier(4)

            async def hold(n: int) -> tuple[int, int]:
                async with pool.connection() as conn:
                    cursor = await conn.execute("SELECT %s::int, pg_backend_pid()", (n,))
                    row = await cursor.fetchone()
                    async with asyncio.timeout(DEADLINE):
                        await barrier.wait()
                    return row

            rows = await asyncio.gather(*(hold(n) for n in range(4)))
            assert [n for n, _ in rows] == [0, 1, 2, 3]
            assert len({pid for _, pid in rows}) == 4, "four connections at once"

            async def query(n: int) -> int:
                async with pool.connection() as conn:
                    cursor = await conn.execute(
                        "SELECT randomnumber FROM world WHERE id = %s", (n % 10_000 + 1,)
                    )
                    return (await cursor.fetchone())[0]

            numbers = await asyncio.gather(*(query(n) for n in range(50)))
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT randomnumber FROM world WHERE id <= 50 ORDER BY id")
                assert numbers == [row[0] for row in await cursor.fetchall()]
            stats = pool.get_stats()
            assert stats["pool_max"] == 4 and stats["requests_num"] >= 55

    run(main())


# --- asyncpg -------------------------------------------------------------------------------------------------


def test_asyncpg_fetch_prepared_statements_and_transactions(run, pg_dsn):
    asyncpg = pytest.importorskip("asyncpg")

    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM world") == 10_000
            rows = await conn.fetch(
                "SELECT id, randomnumber FROM world WHERE id = ANY($1::int[]) ORDER BY id", [3, 1, 2]
            )
            assert [row["id"] for row in rows] == [1, 2, 3]
            assert await conn.fetchrow("SELECT $1::text AS t, $2::bytea AS b", "héllo", b"\x00") == (
                "héllo",
                b"\x00",
            )

            statement = await conn.prepare("SELECT randomnumber FROM world WHERE id = $1")
            assert [parameter.name for parameter in statement.get_parameters()] == ["int4"]
            prepared = [await statement.fetchval(id_) for id_ in (1, 2, 3)]
            assert prepared == [row["randomnumber"] for row in rows]

            await transactions(conn, asyncpg.UniqueViolationError)
            rows = await conn.fetch("SELECT id, text FROM notes ORDER BY id")
            assert [tuple(row) for row in rows] == [(1, "kept"), (3, "after the savepoint")]
        finally:
            await conn.close()

    run(main())


def test_asyncpg_copy_and_large_results(run, pg_dsn):
    asyncpg = pytest.importorskip("asyncpg")
    count = 100_000

    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            # A large result, whole and through a cursor (many round trips in one transaction).
            values = await conn.fetch("SELECT n, md5(n::text) FROM generate_series(1, $1) AS n", count)
            assert len(values) == count and values[-1][0] == count
            assert values[-1][1] == hashlib.md5(str(count).encode()).hexdigest()
            seen = 0
            async with conn.transaction():
                async for row in conn.cursor(
                    "SELECT n FROM generate_series(1, $1) AS n", count, prefetch=1000
                ):
                    seen += 1
                    assert row["n"] == seen
            assert seen == count

            # COPY in (binary) and out (text).
            await conn.execute("CREATE TEMP TABLE copied (n int, text text)")
            records = [(n, f"row {n}") for n in range(count)]
            assert await conn.copy_records_to_table("copied", records=records) == f"COPY {count}"
            assert await conn.fetchval("SELECT sum(n) FROM copied") == sum(range(count))
            chunks: list[bytes] = []

            async def collect(chunk: bytes) -> None:
                chunks.append(bytes(chunk))

            await conn.copy_from_query("SELECT n, text FROM copied ORDER BY n", output=collect)
            lines = b"".join(chunks).decode().splitlines()
            assert lines == [f"{n}\trow {n}" for n in range(count)]
        finally:
            await conn.close()

    run(main())


def test_asyncpg_pool_serves_concurrent_tasks(run, pg_dsn):
    asyncpg = pytest.importorskip("asyncpg")

    async def main():
        async with asyncpg.create_pool(pg_dsn, min_size=2, max_size=4) as pool:
            barrier = asyncio.Barrier(4)

            async def hold(n: int) -> tuple[int, int]:
                async with pool.acquire() as conn:
                    row = await conn.fetchrow("SELECT $1::int, pg_backend_pid()", n)
                    async with asyncio.timeout(DEADLINE):
                        await barrier.wait()
                    return tuple(row)

            rows = await asyncio.gather(*(hold(n) for n in range(4)))
            assert [n for n, _ in rows] == [0, 1, 2, 3]
            assert len({pid for _, pid in rows}) == 4, "four connections at once"

            numbers = await asyncio.gather(
                *(pool.fetchval("SELECT randomnumber FROM world WHERE id = $1", n + 1) for n in range(50))
            )
            expected = await pool.fetch("SELECT randomnumber FROM world WHERE id <= 50 ORDER BY id")
            assert numbers == [row[0] for row in expected]
            assert pool.get_size() <= 4

    run(main())


def test_asyncpg_timeouts_cancel_the_query_in_the_server(run, pg_dsn):
    asyncpg = pytest.importorskip("asyncpg")

    async def main():
        conn = await asyncpg.connect(pg_dsn)
        monitor = await asyncpg.connect(pg_dsn)
        try:

            async def running(tag: str) -> int:
                return await monitor.fetchval(ACTIVE_WITH_TAG.format("$1::text"), tag)

            # asyncpg's own timeout, then asyncio.timeout cancelling the awaiting task: either way asyncpg
            # sends PostgreSQL a cancel request and the connection stays usable.
            sql, tag = tagged("SELECT pg_sleep(600)")
            with pytest.raises(TimeoutError):
                await conn.fetch(sql, timeout=0.2)
            await until(lambda: equals(running(tag), 0), "the timed-out pg_sleep still runs in the server")
            assert await conn.fetchval("SELECT 1") == 1

            sql, tag = tagged("SELECT pg_sleep(600)")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await conn.fetch(sql)
            await until(lambda: equals(running(tag), 0), "the cancelled pg_sleep still runs in the server")
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()
            await monitor.close()

    run(main())


# --- websockets ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def starlette_server() -> Iterator[ServerProcess]:
    """One `runtime serve` of the Starlette test app (two loops) for the WebSocket and httpx tests."""
    server = ServerProcess(STARLETTE, "--loops", "2", "--log-level", "warning").start()
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.stderr}"


async def exercise_websocket(url: str) -> None:
    """What the two servers below both do on /ws: text echoed with "echo: ", bytes reversed, pings
    answered, "close please" closes with 4001 "asked to"."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedError

    async with connect(url, subprotocols=["other", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        for n in range(3):
            await ws.send(f"hello {n}")
            assert await ws.recv() == f"echo: hello {n}"
        large = os.urandom(512 * 1024)
        await ws.send(large)
        assert await ws.recv() == large[::-1]
        pong = await ws.ping(b"are you there")
        async with asyncio.timeout(DEADLINE):
            latency = await pong
        assert latency >= 0
        await ws.send("close please")
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "asked to")
        assert ws.close_code == 4001


def test_websockets_client_against_runtime_serve(run, starlette_server):
    pytest.importorskip("websockets")
    httpx = pytest.importorskip("httpx")
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{starlette_server.port}/ws"

    async def main():
        await exercise_websocket(url)
        # A close from the client, with its code, reaches the app.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{starlette_server.port}") as http:

            async def closes() -> int:
                return (await http.get("/websocket-log")).json()["log"].count("disconnect 4000")

            before = await closes()
            async with connect(url) as ws:
                await ws.send("hi")
                assert await ws.recv() == "echo: hi"
                await ws.close(4000, "bye")
            assert ws.close_code == 4000
            await until(lambda: equals(closes(), before + 1), "the app never heard the client's close 4000")

    run(main())


def test_websockets_client_against_the_websockets_server_on_the_same_loop(run):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def main():
        closed_with = asyncio.get_running_loop().create_future()

        async def chat(ws) -> None:
            try:
                async for message in ws:
                    if message == "close please":
                        await ws.close(4001, "asked to")
                    elif isinstance(message, str):
                        await ws.send(f"echo: {message}")
                    else:
                        await ws.send(message[::-1])
            except ConnectionClosed:
                pass
            if not closed_with.done():
                closed_with.set_result((ws.close_code, ws.close_reason))

        async with serve(chat, "127.0.0.1", 0, subprotocols=["chat.v1"]) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/ws"
            await exercise_websocket(url)
            assert await closed_with == (4001, "asked to")

            closed_with = asyncio.get_running_loop().create_future()
            async with connect(url, subprotocols=["chat.v1"]) as ws:
                await ws.send("hi")
                assert await ws.recv() == "echo: hi"
                await ws.close(4000, "bye")
            async with asyncio.timeout(DEADLINE):
                assert await closed_with == (4000, "bye")

    run(main())


# --- httpx ---------------------------------------------------------------------------------------------------


def test_httpx_streams_large_bodies_both_ways(run, starlette_server):
    httpx = pytest.importorskip("httpx")
    body = os.urandom(8 * 1024 * 1024)

    async def main():
        async def upload():  # a chunked upload, 64 KiB at a time
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{starlette_server.port}", timeout=60
        ) as client:
            for content in (body, upload()):
                digest, size, chunks = hashlib.sha256(), 0, 0
                async with client.stream("POST", "/echo", content=content) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
                        size += len(chunk)
                        chunks += 1
                assert (size, digest.hexdigest()) == (len(body), hashlib.sha256(body).hexdigest())
                assert chunks > 1, "the body arrived in pieces, as it was read"
            response = await client.get("/file")
            assert response.content == bytes(range(256)) * 1024

    run(main())


def test_httpx_concurrent_requests(run, starlette_server):
    httpx = pytest.importorskip("httpx")

    async def main():
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{starlette_server.port}", limits=limits, timeout=60
        ) as client:
            # Eight streams open at once: each has its first chunk before any ends (/slow-stream holds the
            # second chunk back for a second).
            async with asyncio.TaskGroup() as group:
                barrier = asyncio.Barrier(8)

                async def slow_stream() -> bytes:
                    async with client.stream("GET", "/slow-stream") as response:
                        chunks = response.aiter_bytes()
                        first = await anext(chunks)
                        async with asyncio.timeout(DEADLINE):
                            await barrier.wait()
                        return first + b"".join([chunk async for chunk in chunks])

                streams = [group.create_task(slow_stream()) for _ in range(8)]
            assert [stream.result() for stream in streams] == [b"first;second;"] * 8

            responses = await asyncio.gather(
                *(client.post("/echo", content=f"request {n}") for n in range(64))
            )
            assert [response.text for response in responses] == [f"request {n}" for n in range(64)]

    run(main())
