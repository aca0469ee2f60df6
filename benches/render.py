"""Turn one benches/run.py results JSON into markdown tables and PNG charts, written beside it.

    python benches/render.py                         # the newest benches/results/*.json
    python benches/render.py RESULTS.json [--docs]   # --docs also rewrites the results block of docs/benchmarks.md
                                                     # (of a `run.py --db` run: the database results block)

Writes <stem>.md (tables: every contender × endpoint, then the percore ÷ peer ratios run.py took per
round) and <stem>-rps.png,
<stem>-latency.png, and prints the markdown. Charts need matplotlib (the peers venv has it: scripts/dev
bench renders from there); without it only the markdown is written. `scripts/dev bench` runs this after
every run, with --docs when the run covered every contender.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-results:begin (benches/render.py --docs) -->", "<!-- bench-results:end -->"
# A `run.py --db` run has its own block (the database section).
DB_BEGIN, DB_END = (
    "<!-- bench-db-results:begin (benches/render.py --docs) -->",
    "<!-- bench-db-results:end -->",
)

HYPER = "hyper (pure Rust, the limit)"
NOT_APPLICABLE = "n/a (no Python)"
SMOKE_SECONDS = 10  # runs × duration below this: labelled a smoke run, not a measurement


def endpoint_keys(document: dict) -> list[str]:
    keys = [e["key"] for e in document.get("endpoints", [])]
    for endpoints in document["results"].values():
        keys += [key for key in endpoints if key not in keys]
    return keys


def connections_of(document: dict) -> dict[str, int]:
    found = {e["key"]: e["connections"] for e in document.get("endpoints", [])}
    for endpoints in document["results"].values():
        for key, r in endpoints.items():
            found.setdefault(key, r.get("connections", document["settings"].get("connections", 64)))
    return found


def table(document: dict) -> str:
    results = document["results"]
    hyper = results.get(HYPER, {})
    connections = connections_of(document)
    lines = [
        "| contender | endpoint | req/s (median) | spread | p50 ms | p99 ms | ÷ hyper |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in endpoint_keys(document):
        # The same endpoint of the hyper baseline where it serves it (/json, /sleep), else its /json.
        limit = (hyper.get(key) or hyper.get("/json") or {}).get("median_rps")
        label = f"`{key}`" + (f" ({connections[key]} conn.)" if connections[key] != 64 else "")
        for name, endpoints in results.items():
            r = endpoints.get(key)
            if r is None:
                if name == HYPER:
                    lines.append(f"| {name} | {label} | {NOT_APPLICABLE} | | | | |")
                continue
            spread = f"{r['min_rps']:.0f}–{r['max_rps']:.0f}"
            ratio = f"{r['median_rps'] / limit:.2f}×" if limit else "–"
            lines.append(
                f"| {name} | {label} | {r['median_rps']:.0f} | {spread} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def ratios(document: dict) -> str:
    """percore ÷ peer per endpoint: the median of the per-round ratios run.py recorded (each taken within
    one round, so both sides met the same machine), with their min–max; empty if no pair ran (or the file
    predates interleaved rounds)."""
    pairs = document.get("ratios", [])
    columns = [key for key in endpoint_keys(document) if any(key in pair["endpoints"] for pair in pairs)]
    if not columns:
        return ""
    lines = [
        "| percore ÷ peer (× > 1: percore faster) | " + " | ".join(f"`{key}`" for key in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for pair in pairs:
        cells = []
        for key in columns:
            found = pair["endpoints"].get(key)
            if found is None:
                cells.append("–")
                continue
            values = [entry["ratio"] for entry in found["per_round"]]
            spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
            cells.append(f"{found['median']:.2f}×{spread}")
        lines.append(f"| {pair['percore']} ÷ {pair['peer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def color(name: str) -> str:
    if name.startswith("percore"):
        return "#1f5fa8" if "3.13t" in name else "#6fa8dc"
    # Like percore's: the darker shade for the peers on 3.13t.
    peers = {"Granian": ("#e69138", "#b45f06"), "uvicorn": ("#6aa84f", "#38761d"), "Robyn": ("#8e63b5",) * 2}
    for prefix, (gil, nogil) in peers.items():
        if name.startswith(prefix):
            return nogil if "3.13t" in name else gil
    return "#666666"


def save_png(figure, path: Path, dpi: int = 70) -> None:
    """A small PNG: low dpi, then quantised to a 64-colour palette (charts have few colours)."""
    figure.savefig(path, dpi=dpi)
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=64).save(path, optimize=True)
    except ImportError:
        pass


def charts(document: dict, stem: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed here: no charts (the peers venv has it)", file=sys.stderr)
        return []
    results = document["results"]
    keys = endpoint_keys(document)
    names = list(results)
    connections = connections_of(document)
    written = []
    columns = 2
    rows = math.ceil(len(keys) / columns)
    for kind in ("rps", "latency"):
        height = max(5.0, 0.22 * len(names) * rows + 1.2)
        figure, axes = plt.subplots(rows, columns, figsize=(11, height), sharey=True, squeeze=False)
        for index, key in enumerate(keys):
            ax = axes[index // columns][index % columns]
            ys = range(len(names))
            served = [results[n].get(key) for n in names]
            if kind == "rps":
                values = [r["median_rps"] if r else 0 for r in served]
                low = [r["median_rps"] - r["min_rps"] if r else 0 for r in served]
                high = [r["max_rps"] - r["median_rps"] if r else 0 for r in served]
                ax.barh(ys, values, xerr=[low, high], color=[color(n) for n in names], error_kw={"lw": 0.8})
                ax.set_xlabel("req/s (median, bar = min–max)", fontsize=8)
            else:
                p99 = [r["p99_ms"] if r else 0 for r in served]
                p50 = [r["p50_ms"] if r else 0 for r in served]
                ax.barh(ys, p99, color=[color(n) for n in names], alpha=0.45, label="p99")
                ax.barh(ys, p50, color=[color(n) for n in names], height=0.45, label="p50")
                ax.set_xscale("log")
                ax.set_xlabel("latency ms, log (wide pale bar p99, narrow bar p50)", fontsize=8)
            for y, r in zip(ys, served, strict=True):
                if r is None:
                    transform = ax.get_yaxis_transform()  # x in axes coordinates: works on a log axis too
                    ax.text(0.01, y, "n/a", va="center", fontsize=7, color="#888888", transform=transform)
            title = key + (f" ({connections[key]} connections)" if connections[key] != 64 else "")
            ax.set_title(title, fontsize=10)
            ax.tick_params(labelsize=7)
            ax.grid(axis="x", lw=0.4, alpha=0.5)
            ax.set_yticks(list(ys), names)
        axes[0][0].invert_yaxis()  # once: the y axis is shared, a second inversion would undo it
        for index in range(len(keys), rows * columns):
            axes[index // columns][index % columns].set_visible(False)
        machine = document["machine"]
        what = "throughput" if kind == "rps" else "latency"
        what = f"database {what}" if document["settings"].get("db") else what
        figure.suptitle(
            f"percore benchmark {what}: one core per server, {machine['date'][:10]}, commit {machine['commit']}",
            fontsize=11,
        )
        figure.tight_layout()
        path = stem.with_name(f"{stem.name}-{kind}.png")
        save_png(figure, path)
        plt.close(figure)
        written.append(path)
    return written


def markdown(document: dict, images: list[Path], relative_to: Path) -> str:
    machine, settings = document["machine"], document["settings"]
    lines = [
        f"Run of {machine['date']}, commit {machine['commit']}"
        + (" (with uncommitted changes)" if machine.get("uncommitted_changes") else "")
        + f", {machine['cores']} cores ({machine['cpu']}); "
        + runs_sentence(settings)
        + f", {settings['connections']} connections unless noted."
        + (db_sentence(machine, settings) if settings.get("db") else "")
        + (f" Contenders restricted with --only {settings['only']}." if settings.get("only") else "")
        + (
            f" Endpoints restricted with --endpoint {settings['endpoint']}."
            if settings.get("endpoint")
            else ""
        )
        + (
            " Server and wrk under SCHED_FIFO (`chrt -f 10`)."
            if settings.get("realtime") == "on"
            else " Plain `taskset` pinning (no SCHED_FIFO): other load on the machine shows in these numbers."
        )
        + (
            " **Smoke run (too short to draw conclusions from).**"
            if settings["runs"] * settings["duration"] < SMOKE_SECONDS
            else ""
        ),
        "",
    ]
    for image in images:
        lines += [f"![{image.stem}]({_relative(image, relative_to)})", ""]
    lines += [table(document), ""]
    summary = ratios(document)
    if summary:
        lines += [
            "Ratios: per endpoint the median over the rounds of percore's req/s ÷ the peer's in the same "
            "round (the two measured a minute or two apart), per-round min–max in brackets:",
            "",
            summary,
            "",
        ]
    if document.get("problems"):
        lines += ["Problems in this run (numbers for these are not comparable):", ""]
        lines += [f"- {problem}" for problem in document["problems"]] + [""]
    lines.append(f"Raw data: `{_relative(document['_path'], ROOT)}`.")
    return "\n".join(lines) + "\n"


def db_sentence(machine: dict, settings: dict) -> str:
    """`--db` runs: the database, the pool and which driver implementation ran on each interpreter."""
    labels = {
        "PERCORE_PYTHON_NOGIL": "percore 3.13t",
        "PERCORE_PYTHON_GIL": "percore 3.13 GIL",
        "PEERS_PYTHON_NOGIL": "peers 3.13t",
        "PEERS_PYTHON": "peers 3.13 GIL",
    }
    drivers = "; ".join(
        f"{labels.get(key, key)}: {name}" for key, name in machine.get("db_drivers", {}).items()
    )
    return (
        f" {machine.get('postgresql', 'PostgreSQL')} on core 0 beside wrk; one pool of {settings['db_pool']}"
        f" connections per event loop; driver per interpreter: {drivers}."
    )


def runs_sentence(settings: dict) -> str:
    runs, duration, warmup = settings["runs"], settings["duration"], settings["warmup"]
    if settings.get("interleaved"):
        return (
            f"{runs} interleaved rounds (each round restarts every contender and measures each endpoint once: "
            f"{warmup} s warm-up, {duration} s run)"
        )
    return f"{runs} × {duration} s per endpoint after a {warmup} s warm-up"


def _relative(path: Path, base: Path) -> str:
    """`path` as a link from a file in `base` (both inside the repository; else absolute)."""
    if path.parent == base:
        return path.name
    if not (path.is_relative_to(ROOT) and base.is_relative_to(ROOT)):
        return path.as_posix()
    return Path(*([".."] * len(base.relative_to(ROOT).parts)), path.relative_to(ROOT)).as_posix()


def update_docs(block: str, docs: Path = DOCS, begin: str = BEGIN, end: str = END) -> None:
    text = docs.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{docs} has no {begin} … {end} block")
    docs.write_text(pattern.sub(lambda _: f"{begin}\n{block}{end}", text))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="?", type=Path, help="default: the newest benches/results/*.json")
    parser.add_argument("--docs", action="store_true", help="rewrite the results block of docs/benchmarks.md")
    args = parser.parse_args()
    path = args.results or max(RESULTS.glob("*.json"), key=lambda p: p.stat().st_mtime)
    path = path.resolve()
    document = json.loads(path.read_text())
    document["_path"] = path
    stem = path.with_suffix("")
    images = charts(document, stem)
    stem.with_suffix(".md").write_text(markdown(document, images, path.parent))
    print(markdown(document, images, path.parent))
    for image in images:
        print(f"chart: {_relative(image, ROOT)} ({image.stat().st_size // 1024} KB)")
    if args.docs:
        markers = (DB_BEGIN, DB_END) if document["settings"].get("db") else (BEGIN, END)
        update_docs(markdown(document, images, DOCS.parent), DOCS, *markers)
        print(f"updated {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
