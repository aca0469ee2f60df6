"""Turn an experiment's results JSON (experiments/results/scaling-*.json or routing-*.json) into markdown
tables and PNG charts written beside it; for scaling also the many-core projection.

    python experiments/render.py RESULTS.json [--docs]    # --docs: rewrite its block(s) in docs/experiments.md

Charts need matplotlib (the peers venv has it; scripts/dev experiment renders from there).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benches.render import SMOKE_SECONDS, _relative, save_png  # noqa: E402  (links, colours, small PNGs)

DOCS = ROOT / "docs" / "experiments.md"
PROJECTED_CORES = [1, 2, 4, 8, 16, 32, 64]
DEFAULT_CONNECTIONS = {"/cpu": 8, "/json": 64, "/sleep": 256}  # experiments/scaling.py's, for older files
BUILD_COLORS = {"3.13t": "#1f5fa8", "3.13 GIL": "#e69138"}


def block(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin (experiments/render.py --docs) -->", f"<!-- {name}:end -->"


def update_docs(name: str, text: str, docs: Path = DOCS) -> None:
    begin, end = block(name)
    current = docs.read_text()
    start, stop = current.find(begin), current.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"{docs} has no {begin} … {end} block")
    docs.write_text(current[: start + len(begin)] + "\n" + text + current[stop:])


def smoke_label(document: dict) -> str:
    settings = document.get("settings", {})
    runs = settings.get("runs", document.get("runs", 0))
    duration = settings.get("duration", document.get("duration", 0))
    return " **Smoke run (too short to draw conclusions from).**" if runs * duration < SMOKE_SECONDS else ""


def header(document: dict, path: Path) -> str:
    machine, settings = document["machine"], document.get("settings", {})
    timing = ""
    if settings:
        timing = (
            f"; {settings.get('runs', '?')} × {settings.get('duration', '?')} s per point after a "
            f"{settings.get('warmup', '?')} s warm-up"
        )
    else:
        timing = f"; {document.get('runs', '?')} × {document.get('duration', '?')} s per point"
    dirty = " (with uncommitted changes)" if machine.get("uncommitted_changes") else ""
    smoke = smoke_label(document)
    return (
        f"Run of {machine['date']}, commit {machine['commit']}{dirty}, {machine['cores']} cores "
        f"({machine['cpu']}){timing}. Raw data: `{_relative(path, ROOT)}`.{smoke}"
    )


def problems_markdown(document: dict) -> list[str]:
    if not document.get("problems"):
        return []
    lines = ["", "Problems in this run (numbers for these are not comparable):", ""]
    return lines + [f"- {problem}" for problem in document["problems"]]


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed here: no charts (the peers venv has it)", file=sys.stderr)
        return None
    return plt


def percentile(entry: dict, key: str) -> float:
    """A percentile of a point; older files kept only p99 at the top, the rest per run."""
    if key in entry:
        return entry[key]
    values = sorted(run[key] for run in entry.get("runs", []) if key in run)
    return values[len(values) // 2] if values else float("nan")


# --- scaling ------------------------------------------------------------------------------------------


def fit(speedups: dict[int, float], gil: bool) -> dict:
    """Universal Scalability Law S(N) = N / (1 + σ(N−1) + κN(N−1)) from measured speedups (S(1) = 1).

    With speedups at two or more N > 1: least squares on N/S − 1 = σ(N−1) + κN(N−1), both ≥ 0. With one
    (a 2-core machine): κ cannot be told apart from σ, so Amdahl (κ = 0) when S ≥ 1; when S < 1 (adding a
    loop lost throughput) on a GIL build σ = 1 is assumed (the GIL serialises Python) and κ takes the
    measured loss; on the free-threaded build nothing is projected (the loss is the load generator's share
    of the cores or noise, not a property a fit can carry to more cores)."""
    points = [(n, s) for n, s in sorted(speedups.items()) if n > 1 and s > 0]
    if not points:
        return {"sigma": float("nan"), "kappa": float("nan"), "model": "no data beyond one loop"}
    if len(points) >= 2:
        a = [(n - 1, n * (n - 1)) for n, _ in points]
        y = [n / s - 1 for n, s in points]
        s11 = sum(x1 * x1 for x1, _ in a)
        s12 = sum(x1 * x2 for x1, x2 in a)
        s22 = sum(x2 * x2 for _, x2 in a)
        t1 = sum(x1 * v for (x1, _), v in zip(a, y, strict=True))
        t2 = sum(x2 * v for (_, x2), v in zip(a, y, strict=True))
        det = s11 * s22 - s12 * s12
        sigma, kappa = (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det
        if kappa < 0:
            sigma, kappa = max(0.0, t1 / s11), 0.0
        elif sigma < 0:
            sigma, kappa = 0.0, max(0.0, t2 / s22)
        return {"sigma": sigma, "kappa": kappa, "model": f"USL, least squares over N = 1…{points[-1][0]}"}
    n, s = points[0]
    if s >= 1:
        return {"sigma": max(0.0, (n / s - 1) / (n - 1)), "kappa": 0.0, "model": f"Amdahl from N = 1, {n}"}
    if not gil:
        return {
            "sigma": float("nan"),
            "kappa": float("nan"),
            "model": f"not projected: {n} loops slower than 1 (load generator on the same cores?)",
        }
    return {
        "sigma": 1.0,
        "kappa": (n / s - 1 - (n - 1)) / (n * (n - 1)),
        "model": f"USL, σ = 1 assumed, N = 1, {n}",
    }


def projected(model: dict, n: int) -> float:
    return n / (1 + model["sigma"] * (n - 1) + model["kappa"] * n * (n - 1))


def scaling_markdown(document: dict, path: Path, images: list[Path], base: Path) -> tuple[str, str]:
    results = document["results"]
    loop_counts = sorted({int(n) for paths in results.values() for by in paths.values() for n in by})
    top = loop_counts[-1]
    lines = [header(document, path), ""]
    lines += [
        f"![{image.stem}]({_relative(image, base)})" for image in images if "projection" not in image.name
    ]
    lines += [""]
    columns = " | ".join(f"{n} loop{'s' if n > 1 else ''} req/s" for n in loop_counts)
    lines += [
        f"| build | endpoint (connections) | {columns} | scaling ({top} ÷ 1) | p50 ms (1 → {top}) | "
        f"p99 ms (1 → {top}) |",
        "|---|---|" + "---:|" * (len(loop_counts) + 3),
    ]
    for label, paths in results.items():
        for endpoint, by in paths.items():
            one, last = by.get("1"), by.get(str(top))
            cells = " | ".join(
                f"{by[str(n)]['median_rps']:.0f}" if str(n) in by else "–" for n in loop_counts
            )
            scale = f"**{last['median_rps'] / one['median_rps']:.2f}×**" if one and last else "–"
            p50 = (
                f"{percentile(one, 'p50_ms'):.2f} → {percentile(last, 'p50_ms'):.2f}" if one and last else "–"
            )
            p99 = (
                f"{percentile(one, 'p99_ms'):.2f} → {percentile(last, 'p99_ms'):.2f}" if one and last else "–"
            )
            connections = (one or {}).get("connections") or document.get("settings", {}).get(
                "endpoints", {}
            ).get(endpoint, DEFAULT_CONNECTIONS.get(endpoint, "?"))
            lines.append(f"| {label} | `{endpoint}` ({connections}) | {cells} | {scale} | {p50} | {p99} |")
    free, gil = results.get("3.13t"), results.get("3.13 GIL")
    if free and gil:
        lines += [
            "",
            "Single-loop cost of the free-threaded build (1 loop, same percore commit):",
            "",
            "| endpoint | 3.13t req/s | 3.13 GIL req/s | 3.13t ÷ GIL | p99 ms 3.13t / GIL |",
            "|---|---:|---:|---:|---:|",
        ]
        for endpoint in free:
            a, b = free[endpoint].get("1"), gil.get(endpoint, {}).get("1")
            if a and b:
                lines.append(
                    f"| `{endpoint}` | {a['median_rps']:.0f} | {b['median_rps']:.0f} | "
                    f"{a['median_rps'] / b['median_rps']:.2f}× | {a['p99_ms']:.2f} / {b['p99_ms']:.2f} |"
                )
    lines += problems_markdown(document)
    measured = "\n".join(lines) + "\n"

    lines = [
        f"**PROJECTION, not a measurement.** Fitted to the run above ({path.name}); measured only up to "
        f"{top} loops.{smoke_label(document)}",
        "",
    ]
    lines += [f"![{image.stem}]({_relative(image, base)})" for image in images if "projection" in image.name]
    lines += [
        "",
        "| build | endpoint | model | σ (serial) | κ (crosstalk) | "
        + " | ".join(f"{n} cores" for n in PROJECTED_CORES)
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(PROJECTED_CORES),
    ]
    for label, endpoint, model in models(results):
        cells = " | ".join(
            f"{projected(model, n):.1f}×" if not math.isnan(model["sigma"]) else "–" for n in PROJECTED_CORES
        )
        lines.append(
            f"| {label} | `{endpoint}` | {model['model']} | {number(model['sigma'])} | {number(model['kappa'])} | {cells} |"
        )
    return measured, "\n".join(lines) + "\n"


def number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def models(results: dict) -> list[tuple[str, str, dict]]:
    found = []
    for label, paths in results.items():
        for endpoint, by in paths.items():
            if "1" not in by or not by["1"]["median_rps"]:
                continue
            speedups = {int(n): entry["median_rps"] / by["1"]["median_rps"] for n, entry in by.items()}
            found.append((label, endpoint, fit(speedups, gil="GIL" in label)))
    return found


def scaling_charts(document: dict, stem: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    results = document["results"]
    endpoints = list(dict.fromkeys(e for paths in results.values() for e in paths))
    figure, axes = plt.subplots(2, len(endpoints), figsize=(3.6 * len(endpoints), 5.6), squeeze=False)
    for column, endpoint in enumerate(endpoints):
        for label, paths in results.items():
            by = paths.get(endpoint, {})
            loops = sorted(int(n) for n in by)
            style = {"color": BUILD_COLORS.get(label, "#666666"), "marker": "o", "label": label}
            axes[0][column].plot(loops, [by[str(n)]["median_rps"] for n in loops], **style)
            axes[1][column].plot(loops, [percentile(by[str(n)], "p99_ms") for n in loops], **style)
        axes[0][column].set_title(endpoint, fontsize=10)
        axes[0][column].set_ylabel("req/s (median)", fontsize=8)
        axes[1][column].set_ylabel("p99 ms", fontsize=8)
        axes[1][column].set_xlabel("loops (one per core)", fontsize=8)
        for row in (0, 1):
            ax = axes[row][column]
            ax.set_ylim(bottom=0)
            ax.grid(lw=0.4, alpha=0.5)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=8)
    machine = document["machine"]
    figure.suptitle(f"percore GIL vs no-GIL, {machine['date'][:10]}, commit {machine['commit']}", fontsize=11)
    figure.tight_layout()
    measured = stem.with_name(f"{stem.name}.png")
    save_png(figure, measured, dpi=90)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(PROJECTED_CORES, PROJECTED_CORES, color="#bbbbbb", ls=":", label="ideal (linear)")
    for label, endpoint, model in models(results):
        style = "-" if label == "3.13t" else "--"
        line_color = {"/cpu": "#1f5fa8", "/json": "#6aa84f", "/sleep": "#8e63b5"}.get(endpoint, "#666666")
        if not math.isnan(model["sigma"]):
            ax.plot(
                PROJECTED_CORES,
                [projected(model, n) for n in PROJECTED_CORES],
                ls=style,
                color=line_color,
                label=f"{label} {endpoint} (σ={model['sigma']:.2f}, κ={model['kappa']:.3f})",
            )
        by = results[label][endpoint]
        loops = sorted(int(n) for n in by)
        ax.plot(
            loops, [by[str(n)]["median_rps"] / by["1"]["median_rps"] for n in loops], "o", color=line_color
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(PROJECTED_CORES, [str(n) for n in PROJECTED_CORES])
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}×"))
    ax.set_xlabel("cores (= loops)", fontsize=8)
    ax.set_ylabel("speedup over 1 loop (log)", fontsize=8)
    ax.set_title("PROJECTION from the measured points (dots); lines beyond them are not measured", fontsize=9)
    ax.grid(lw=0.4, alpha=0.5)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="upper left")
    figure.tight_layout()
    projection = stem.with_name(f"{stem.name}-projection.png")
    save_png(figure, projection, dpi=100)
    plt.close(figure)
    return [measured, projection]


# --- routing ------------------------------------------------------------------------------------------


def routing_markdown(document: dict, path: Path, images: list[Path], base: Path) -> str:
    settings = document["settings"]
    lines = [header(document, path), ""]
    mixes = settings.get("mixes", {})
    described = "; ".join(
        f"{mix}: {m['slow_fraction']:.0%} of requests {m['slow_ms']:g} ms, the rest {m['fast_ms']:g} ms"
        for mix, m in mixes.items()
    )
    lines += [
        f"{settings.get('loops')} loops, {settings.get('connections')} wrk connections; {described}.",
        "",
    ]
    lines += [f"![{image.stem}]({_relative(image, base)})" for image in images] + [""]
    lines += [
        "| build | mix | policy | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for label, by_mix in document["results"].items():
        for mix, by_policy in by_mix.items():
            for policy, e in by_policy.items():
                lines.append(
                    f"| {label} | {mix} | `{policy}` | {e['median_rps']:.0f} | {e['p50_ms']:.2f} | "
                    f"{e['p90_ms']:.2f} | {e['p99_ms']:.2f} |"
                )
    lines += problems_markdown(document)
    return "\n".join(lines) + "\n"


def routing_charts(document: dict, stem: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    results = document["results"]
    labels = list(results)
    mixes = list(dict.fromkeys(mix for by_mix in results.values() for mix in by_mix))
    figure, axes = plt.subplots(
        len(labels), len(mixes), figsize=(4.2 * len(mixes), 2.8 * len(labels)), squeeze=False
    )
    shades = {"p50_ms": 1.0, "p90_ms": 0.65, "p99_ms": 0.35}
    for row, label in enumerate(labels):
        for column, mix in enumerate(mixes):
            ax = axes[row][column]
            by_policy = results[label].get(mix, {})
            policies = list(by_policy)
            for offset, (key, alpha) in enumerate(shades.items()):
                xs = [i + (offset - 1) * 0.27 for i in range(len(policies))]
                values = [by_policy[p][key] for p in policies]
                ax.bar(xs, values, width=0.27, color=BUILD_COLORS["3.13t"], alpha=alpha, label=key[:3])
            ticks = [f"{p}\n{by_policy[p]['median_rps']:.0f} req/s" for p in policies]
            ax.set_xticks(range(len(policies)), ticks, fontsize=8)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_ylabel("latency ms (log)", fontsize=8)
            ax.set_title(f"{label}, {mix} mix", fontsize=9)
            ax.grid(axis="y", lw=0.4, alpha=0.5)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    machine = document["machine"]
    figure.suptitle(
        f"percore routing policies, {machine['date'][:10]}, commit {machine['commit']}", fontsize=10
    )
    figure.tight_layout()
    out = stem.with_name(f"{stem.name}.png")
    save_png(figure, out, dpi=90)
    plt.close(figure)
    return [out]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path)
    parser.add_argument("--docs", action="store_true", help="rewrite its block(s) in docs/experiments.md")
    args = parser.parse_args()
    path = args.results.resolve()
    document = json.loads(path.read_text())
    kind = document.get("experiment") or path.name.split("-")[0]
    stem = path.with_suffix("")
    outputs: dict[str, str]
    if kind == "scaling":
        images = scaling_charts(document, stem)
        here = scaling_markdown(document, path, images, path.parent)
        outputs = dict(
            zip(
                ("scaling-results", "projection"),
                scaling_markdown(document, path, images, DOCS.parent),
                strict=True,
            )
        )
        text = "\n".join(here)
    elif kind == "routing":
        images = routing_charts(document, stem)
        text = routing_markdown(document, path, images, path.parent)
        outputs = {"routing-results": routing_markdown(document, path, images, DOCS.parent)}
    else:
        raise SystemExit(f"{path}: not a scaling or routing result")
    stem.with_suffix(".md").write_text(text)
    print(text)
    for image in images:
        size = image.stat().st_size // 1024
        print(f"chart: {image.relative_to(ROOT) if image.is_relative_to(ROOT) else image} ({size} KB)")
    if args.docs:
        for name, block_text in outputs.items():
            update_docs(name, block_text)
        print(f"updated {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
