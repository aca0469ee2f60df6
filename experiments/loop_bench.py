"""Micro-benchmark: percore's event loop against asyncio's own, same process, interleaved rounds.

    python experiments/loop_bench.py [--rounds 5] [--scale 1.0] [--json FILE]

Workloads (each reports operations per second; the ratio percore/asyncio is what to read):
- call_soon: a chain of 200,000 `call_soon` callbacks, each scheduling the next (the ready queue).
- call_later: 50,000 timers with spread deadlines, a quarter cancelled, all due at once (the heap).
- sleep0: two tasks ping-ponging through `await asyncio.sleep(0)` 50,000 times each (task steps).
- futures: 50,000 awaits of a future resolved by `call_soon` (the handler-awaits-I/O shape).
- tcp_streams: 5,000 request/response round trips over one loopback connection, asyncio streams.
- tcp_protocol: 20,000 round trips over one loopback connection, Protocol/transport (no streams).

Run under each interpreter (`taskset -c 1` for a steady core). Numbers go in docs/event-loop.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import percore

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "percore": percore.new_event_loop}


def bench_call_soon(loop, scale):
    n = int(200_000 * scale)
    done = loop.create_future()
    count = 0

    def step():
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    loop.run_until_complete(done)
    return n


def bench_call_later(loop, scale):
    n = int(50_000 * scale)
    fired = 0
    now = loop.time()

    def fire():
        nonlocal fired
        fired += 1

    handles = [loop.call_at(now + (i % 1000) * 1e-6, fire) for i in range(n)]
    for handle in handles[::4]:
        handle.cancel()
    done = loop.create_future()
    loop.call_at(now + 0.001, done.set_result, None)
    loop.run_until_complete(done)
    return n


def bench_sleep0(loop, scale):
    n = int(50_000 * scale)

    async def spin():
        for _ in range(n):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(spin(), spin())

    loop.run_until_complete(main())
    return 2 * n


def bench_futures(loop, scale):
    n = int(50_000 * scale)

    async def main():
        for i in range(n):
            future = loop.create_future()
            loop.call_soon(future.set_result, i)
            await future

    loop.run_until_complete(main())
    return n


def bench_tcp_streams(loop, scale):
    n = int(5_000 * scale)

    async def main():
        async def echo(reader, writer):
            while line := await reader.readline():
                writer.write(line)
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(b"ping\n")
            await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    return n


def bench_tcp_protocol(loop, scale):
    n = int(20_000 * scale)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.left = n
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            transport.write(b"x")

        def data_received(self, data):
            self.left -= 1
            if self.left:
                self.transport.write(b"x")
            else:
                self.done.set_result(None)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        await client.done
        transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    return n


BENCHES = {
    "call_soon": bench_call_soon,
    "call_later": bench_call_later,
    "sleep0": bench_sleep0,
    "futures": bench_futures,
    "tcp_streams": bench_tcp_streams,
    "tcp_protocol": bench_tcp_protocol,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--bench", action="append", choices=list(BENCHES))
    parser.add_argument("--json")
    args = parser.parse_args()
    build = "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL"
    print(f"{sys.version.split()[0]} ({build})")
    results = {}
    for name in args.bench or BENCHES:
        rates: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for _ in range(args.rounds):
            for loop_name, factory in LOOPS.items():  # interleaved: drift hits both alike
                loop = factory()
                try:
                    started = time.perf_counter()
                    ops = BENCHES[name](loop, args.scale)
                    rates[loop_name].append(ops / (time.perf_counter() - started))
                finally:
                    loop.close()
        medians = {loop: statistics.median(r) for loop, r in rates.items()}
        ratio = medians["percore"] / medians["asyncio"]
        results[name] = {"ops_per_s": medians, "ratio": ratio}
        print(
            f"{name:14} asyncio {medians['asyncio']:>12,.0f}/s   percore {medians['percore']:>12,.0f}/s"
            f"   {ratio:.2f}x",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"python": sys.version, "build": build, "results": results}, out, indent=1)


if __name__ == "__main__":
    main()
