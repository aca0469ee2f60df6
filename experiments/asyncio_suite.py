"""CPython's own asyncio test suite (Lib/test/test_asyncio) against percore's event loop and asyncio's.

    python experiments/asyncio_suite.py [--loop percore|asyncio|both] [--module test_tasks ...]
        [--timeout SECONDS] [--json FILE]

Runs every module of the interpreter's `test.test_asyncio` package (the provisioned CPython installs the
`test` package from the same 3.13 source tarball, `$PERCORE_CACHE/src`) once per loop, each module in its
own subprocess (a hang or crash costs one module, not the run), and prints pass/skip/fail counts per
module and in total, side by side. With `--loop percore`, asyncio is patched before the tests import it
so that every loop the suite creates for real I/O is `percore.EventLoop`: `asyncio.SelectorEventLoop`,
`asyncio.EventLoop`, the default policy's loop factory and `asyncio.new_event_loop`. A selector passed to
`SelectorEventLoop(selector)` (test_events runs its tests once per selector class) is closed and
ignored: percore's reactor always uses its own epoll. Tests that build their own loop classes
(`test_utils.TestLoop`, mocks of `BaseSelectorEventLoop`) run on asyncio's code in both columns.

`--json` writes the counts and, per loop, every test that failed or errored with the last line of its
traceback (what docs/event-loop.md explains). `scripts/dev asyncio-suite` runs it on both builds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import unittest

SKIP_MODULES = {"test_windows_events", "test_windows_utils", "test_proactor_events"}  # Windows only


def modules() -> list[str]:
    import test.test_asyncio as package

    names = sorted(
        name[:-3]
        for name in os.listdir(os.path.dirname(package.__file__))
        if name.startswith("test_") and name.endswith(".py")
    )
    return [name for name in names if name not in SKIP_MODULES]


def patch_asyncio_with_percore() -> None:
    import asyncio
    import asyncio.events
    import asyncio.unix_events

    import percore

    class SuiteLoop(percore.EventLoop):
        def __init__(self, selector=None) -> None:
            if selector is not None:
                selector.close()
            super().__init__()

    for module in (asyncio, asyncio.unix_events):
        module.SelectorEventLoop = SuiteLoop
        module.EventLoop = SuiteLoop
    asyncio.unix_events._UnixDefaultEventLoopPolicy._loop_factory = SuiteLoop
    asyncio.DefaultEventLoopPolicy._loop_factory = SuiteLoop


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_child(loop: str, module: str) -> None:
    """In the subprocess: run one module, print one JSON line of results."""
    import faulthandler
    import signal

    faulthandler.enable()
    # Launched in the background (a script's `cmd &`), SIGINT arrives ignored, and Python then installs no
    # handler: the tests that interrupt themselves (test_runners, `_thread.interrupt_main()`) would wait
    # forever, on either loop, until the module's timeout.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if loop == "percore":
        patch_asyncio_with_percore()
    suite = unittest.defaultTestLoader.loadTestsFromName(f"test.test_asyncio.{module}")
    result = unittest.TestResult()
    started = time.monotonic()
    suite.run(result)
    problems = [
        {"test": test.id(), "kind": kind, "error": last_line(text)}
        for kind, items in (("failure", result.failures), ("error", result.errors))
        for test, text in items
    ]
    problems += [
        {"test": test.id(), "kind": "unexpected success", "error": ""} for test in result.unexpectedSuccesses
    ]
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped) + len(result.expectedFailures)
    sys.stdout.flush()
    print(
        "\nRESULT "
        + json.dumps(
            {
                "module": module,
                "run": result.testsRun,
                "passed": result.testsRun - failed - skipped,
                "skipped": skipped,
                "failed": failed,
                "seconds": round(time.monotonic() - started, 1),
                "problems": problems,
            }
        ),
        flush=True,
    )


def run_module(loop: str, module: str, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", loop, module]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"module": module, "run": 0, "passed": 0, "skipped": 0, "failed": 0, "crashed": "timeout"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {
        "module": module,
        "run": 0,
        "passed": 0,
        "skipped": 0,
        "failed": 0,
        "crashed": f"exit {done.returncode}: {last_line(done.stderr)}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop", choices=["percore", "asyncio", "both"], default="both")
    parser.add_argument("--module", action="append", help="a test_asyncio module (default: all)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per module")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return 0
    loops = ["asyncio", "percore"] if args.loop == "both" else [args.loop]
    names = args.module or modules()
    results: dict[str, list[dict]] = {loop: [] for loop in loops}
    build = "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL"
    print(f"test_asyncio on {sys.version.split()[0]} ({build}), {len(names)} modules", flush=True)
    header = f"{'module':28}" + "".join(f"{loop + ' pass/skip/fail':>28}" for loop in loops)
    print(header, flush=True)
    for name in names:
        row = f"{name:28}"
        for loop in loops:
            r = run_module(loop, name, args.timeout)
            results[loop].append(r)
            cell = r.get("crashed") or f"{r['passed']}/{r['skipped']}/{r['failed']}"
            row += f"{cell:>28}"
        print(row, flush=True)
    totals = {
        loop: {key: sum(r[key] for r in rs) for key in ("run", "passed", "skipped", "failed")}
        for loop, rs in results.items()
    }
    row = f"{'total':28}"
    for loop in loops:
        t = totals[loop]
        row += f"{t['passed']}/{t['skipped']}/{t['failed']}".rjust(28)
    print(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"python": sys.version, "build": build, "totals": totals, "modules": results}, out, indent=1
            )
    crashed = any(r.get("crashed") for rs in results.values() for r in rs)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
