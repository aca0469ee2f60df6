"""Routing policies under an uneven load: local vs round-robin vs least-loaded, few connections, some
requests 50× more expensive than the rest.

    scripts/dev experiment routing [--duration 5 --runs 3 --warmup 2 --connections 4]

percore on every core (`--loops` = cores), once per policy and build, serving experiments/apps/work.py.
wrk drives `/work?ms=N` through experiments/mix.lua with two mixes:

- uneven: 5% of requests spin for 10 ms, the rest for 0.2 ms (50× cheaper);
- even: every request 0.2 ms (the control: what a hand-off costs when there is nothing to balance);

each with the work in an `async def` handler (`/work`: it spins its loop) and in a `def` handler
(`/work-sync`: it runs on the sync pool, the loop stays free); `--handlers` picks them.

Few keep-alive connections (default 4) stay on the loop the kernel accepted them on, so `local` can
neither spread them nor move cheap requests away from a loop stuck in a slow one; round-robin spreads
every connection's requests; least-loaded sends each to the loop with the fewest in flight.

Writes experiments/results/routing-<date>-<commit>.json (req/s, p50/p75/p90/p99 per policy, mix, build);
experiments/render.py makes the table and chart.
"""

from __future__ import annotations

import os
import sys

from _server import ROOT, builds, serving
from scaling import arguments, measure, write

POLICIES = ["local", "round-robin", "least-loaded"]
FAST_MS, SLOW_MS, SLOW_FRACTION = 0.2, 10.0, 0.05
MIXES = {"uneven": SLOW_FRACTION, "even": 0.0}
HANDLERS = {"async": "/work", "def": "/work-sync"}
SCRIPT = ROOT / "experiments" / "mix.lua"


def main() -> int:
    parser = arguments(__doc__)
    cores = os.cpu_count() or 1
    parser.add_argument("--loops", type=int, default=cores, help=f"default: every core ({cores})")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (default 4: few)")
    parser.add_argument("--handlers", default="async,def", help="handler kinds: async, def (default both)")
    args = parser.parse_args()
    handlers = {kind: HANDLERS[kind] for kind in args.handlers.split(",")}
    results: dict = {}
    problems: list[str] = []
    for label, python in builds():
        for policy in POLICIES:
            with serving(python, args.loops, policy, problems) as port:
                for (mix, fraction), (kind, path) in (
                    (m, h) for h in handlers.items() for m in MIXES.items()
                ):
                    env = {"FAST_MS": str(FAST_MS), "SLOW_MS": str(SLOW_MS), "SLOW_FRACTION": str(fraction)}
                    env["WORK_PATH"] = path
                    url = f"http://127.0.0.1:{port}{path}"
                    mix = f"{mix} {kind}"
                    entry = measure(url, args.connections, args, script=SCRIPT, env=env)
                    results.setdefault(label, {}).setdefault(mix, {})[policy] = entry
                    print(
                        f"{label:9} {mix:11} {policy:12} {entry['median_rps']:>8.0f} req/s  p50 "
                        f"{entry['p50_ms']:.2f}  p90 {entry['p90_ms']:.2f}  p99 {entry['p99_ms']:.2f} ms",
                        flush=True,
                    )
    mixes = {
        f"{mix} {kind}": {"fast_ms": FAST_MS, "slow_ms": SLOW_MS, "slow_fraction": f}
        for kind in handlers
        for mix, f in MIXES.items()
    }
    settings = {**vars(args), "mixes": mixes, "policies": POLICIES}
    write("routing", {"settings": settings, "results": results, "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
