"""The sweep's report: its rows summed up per cell over the seeds (a markdown table), the pick
per data set, and two plots: latency against pruning, and accuracy against latency with the
Pareto front of each system."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import _fmt

#: How a row names its system and profile in the report, and its marker in the plots.
SYSTEMS = {
    "default": ("fheqnn default", "o", "tab:blue"),
    "exact": ("fheqnn exact", "s", "tab:green"),
    "reference": ("Concrete ML 1.9", "^", "tab:red"),
}

#: The pick per data set is the fastest cell whose mean accuracy is within this of the best
#: (one point: about one and a half of breast cancer's 143 test rows, one of iris' 38 is 2.6).
PICK_TOLERANCE = 0.01

_SUMMARY_HEAD = (
    "data set",
    "width",
    "prune",
    "system",
    "seeds",
    "acc clear worst/mean",
    "acc sim worst/mean",
    "rows changed (max)",
    "PBS",
    "lookup bits",
    "latency s",
    "x floor",
    "keygen s",
    "eval keys MB",
    "compile s",
)


def _mean(values: list[Any]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.fmean(found) if found else None


def _lookup_bits(row: dict) -> str | None:
    layers = row.get("layers")
    if not layers:
        return None
    return "/".join(str(layer["lookup_bits"]) for layer in layers if layer.get("lookup_bits"))


def aggregate(rows: list[dict]) -> list[dict[str, Any]]:
    """One record per (data set, width, pruning, profile): worst and mean over its seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (row["dataset"], int(row.get("width", 4)), float(row["prune"]))
        groups[(*key, row.get("profile") or "default")].append(row)
    records = []
    for (dataset, width, prune, profile), members in sorted(groups.items()):
        clear = [r["acc_clear"] for r in members]
        simulated = [r["acc_simulated"] for r in members]
        bits = sorted({b for b in map(_lookup_bits, members) if b})
        records.append(
            {
                "dataset": dataset,
                "width": width,
                "prune": prune,
                "profile": profile,
                "seeds": len(members),
                "acc_clear_worst": min(clear),
                "acc_clear_mean": statistics.fmean(clear),
                "acc_sim_worst": min(simulated),
                "acc_sim_mean": statistics.fmean(simulated),
                "unstable_max": max(r.get("simulate_unstable_rows", 0) for r in members),
                "pbs": _mean([r.get("pbs") for r in members]),
                "lookup_bits": ", ".join(bits) if bits else None,
                "latency_s": _mean([r.get("latency_single_s") for r in members]),
                "over_floor": _mean([r.get("latency_over_floor") for r in members]),
                "keygen_s": _mean([r.get("keygen_s") for r in members]),
                "keys_mb": _mean([r.get("eval_keys_mb") for r in members]),
                "compile_s": _mean([r.get("compile_total_s", r.get("compile_s")) for r in members]),
            }
        )
    return records


def summary_table(records: list[dict[str, Any]]) -> str:
    """The aggregated records as a markdown table (accuracies in %)."""
    lines = ["| " + " | ".join(_SUMMARY_HEAD) + " |", "|" + "---|" * len(_SUMMARY_HEAD)]
    for r in records:
        cells = [
            r["dataset"],
            f"x{r['width']}",
            f"{100 * r['prune']:.0f} %",
            SYSTEMS.get(r["profile"], (r["profile"],))[0],
            str(r["seeds"]),
            f"{100 * r['acc_clear_worst']:.1f} / {100 * r['acc_clear_mean']:.1f}",
            f"{100 * r['acc_sim_worst']:.1f} / {100 * r['acc_sim_mean']:.1f}",
            str(r["unstable_max"]),
            _fmt(r["pbs"], ".0f"),
            r["lookup_bits"] or "-",
            _fmt(r["latency_s"], ".3f"),
            _fmt(r["over_floor"], ".2f"),
            _fmt(r["keygen_s"], ".1f"),
            _fmt(r["keys_mb"], ".1f"),
            _fmt(r["compile_s"], ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cost(record: dict[str, Any]) -> float:
    """Latency when measured, else the PBS count (a simulation-only sweep)."""
    return record["latency_s"] if record["latency_s"] is not None else (record["pbs"] or 0.0)


def picks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set and system: the cheapest cell whose mean simulated accuracy is within
    :data:`PICK_TOLERANCE` of that system's best on the data set."""
    chosen = []
    for dataset in sorted({r["dataset"] for r in records}):
        for profile in SYSTEMS:
            mine = [r for r in records if r["dataset"] == dataset and r["profile"] == profile]
            if not mine:
                continue
            best = max(r["acc_sim_mean"] for r in mine)
            good = [r for r in mine if r["acc_sim_mean"] >= best - PICK_TOLERANCE]
            chosen.append({**min(good, key=_cost), "best_acc": best})
    return chosen


def picks_text(records: list[dict[str, Any]]) -> str:
    """The picks as a list: width, pruning, accuracy given up, latency."""
    lines = []
    for r in picks(records):
        cost = (
            f"{r['latency_s']:.3f} s per row"
            if r["latency_s"] is not None
            else f"{r['pbs']:.0f} PBS"
        )
        lines.append(
            f"- {r['dataset']}, {SYSTEMS[r['profile']][0]}: width x{r['width']}, prune "
            f"{100 * r['prune']:.0f} % ({100 * r['acc_sim_mean']:.1f} % mean accuracy, "
            f"{100 * (r['best_acc'] - r['acc_sim_mean']):.1f} points under its best; {cost})"
        )
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt: Any, datasets: list[str]) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.9), squeeze=False)
    return fig, list(axes[0])


def plot_pruning(records: list[dict[str, Any]], path: Path) -> None:
    """Latency (or PBS) against the pruning percentage, one panel per data set, one line per
    system and width (PNG)."""
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in records})
    fig, axes = _panels(plt, datasets)
    timed = any(r["latency_s"] is not None for r in records)
    styles = ["-", "--", ":", "-."]
    for ax, dataset in zip(axes, datasets, strict=True):
        widths = sorted({r["width"] for r in records if r["dataset"] == dataset})
        for profile, (name, marker, color) in SYSTEMS.items():
            for style, width in zip(styles * 4, widths, strict=False):
                line = sorted(
                    (
                        r
                        for r in records
                        if (r["dataset"], r["profile"], r["width"]) == (dataset, profile, width)
                    ),
                    key=lambda r: r["prune"],
                )
                if line:
                    ax.plot(
                        [100 * r["prune"] for r in line],
                        [_cost(r) for r in line],
                        marker=marker,
                        linestyle=style,
                        color=color,
                        label=f"{name} x{width}",
                    )
        ax.set_title(dataset)
        ax.set_xlabel("hidden neurons pruned (%)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("encrypted latency per row (s)" if timed else "PBS per row")
    axes[-1].legend(fontsize=6, loc="best")
    _save(fig, plt, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def plot_tradeoff(records: list[dict[str, Any]], path: Path) -> None:
    """Mean accuracy against latency (or PBS), every cell a point, one panel per data set,
    each system's Pareto front drawn (PNG)."""
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in records})
    fig, axes = _panels(plt, datasets)
    timed = any(r["latency_s"] is not None for r in records)
    for ax, dataset in zip(axes, datasets, strict=True):
        for profile, (name, marker, color) in SYSTEMS.items():
            mine = [r for r in records if (r["dataset"], r["profile"]) == (dataset, profile)]
            points = [(_cost(r), 100 * r["acc_sim_mean"]) for r in mine]
            if not points:
                continue
            ax.scatter(*zip(*points, strict=True), marker=marker, color=color, alpha=0.5, s=18)
            front = pareto_front(points)
            ax.step(
                *zip(*front, strict=True),
                where="post",
                color=color,
                marker=marker,
                markersize=7,
                label=f"{name} (front)",
            )
        ax.set_title(dataset)
        ax.set_xscale("log")
        ax.set_xlabel("encrypted latency per row (s)" if timed else "PBS per row")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy, mean of seeds (%)")
    axes[-1].legend(fontsize=7)
    _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _comparison(rows: list[dict]) -> str:
    """Each of our rows beside the reference's row of the same cell, with the ratios (empty
    without reference rows)."""
    from .reference import comparison_table

    def cell(row: dict) -> tuple:
        return (row["dataset"], int(row.get("width", 4)), float(row["prune"]), int(row["seed"]))

    theirs = {cell(r): r for r in rows if r.get("system", "fheqnn") != "fheqnn"}
    pairs = [
        (r, theirs[cell(r)])
        for r in rows
        if r.get("system", "fheqnn") == "fheqnn" and cell(r) in theirs
    ]
    if not pairs:
        return ""
    return (
        "## Side by side with the reference, per seed (ratio: ours / reference)\n\n"
        f"{comparison_table(pairs)}\n\n"
    )


def write_sweep_report(rows: list[dict], folder: Path, stem: str) -> list[Path]:
    """``<stem>.md`` (picks, the per-cell summary, every row), ``<stem>_latency.png`` and
    ``<stem>_tradeoff.png`` in ``folder``; returns their paths."""
    from ..fileio import atomic_write_bytes
    from .report import markdown_table

    records = aggregate(rows)
    loads = [r.get("load_before", r.get("load")) for r in rows]
    loads = [x for x in loads if x is not None]
    ours = [r for r in rows if r.get("system", "fheqnn") == "fheqnn"]
    text = (
        f"# fheqnn pruning benchmark\n\n{len(rows)} rows, {len(records)} cells; machine load "
        f"(1-min average) before runs: {min(loads, default=0):.2f} to "
        f"{max(loads, default=0):.2f}. Accuracies in % of the test split (simulated: the "
        "mean of 10 passes); latency: median of the timed encrypted rows, mean over seeds; "
        "x floor: latency over the circuit's lookup floor; rows changed: test rows whose label "
        "changed over 10 simulation passes (worst seed).\n\n"
        f"## Pick per data set\n\nThe fastest cell within {100 * PICK_TOLERANCE:.1f} point of "
        f"each system's best mean accuracy:\n\n{picks_text(records)}\n\n"
        f"![latency against pruning]({stem}_latency.png)\n\n"
        f"![accuracy against latency]({stem}_tradeoff.png)\n\n"
        f"## Per cell (worst / mean over seeds)\n\n{summary_table(records)}\n\n"
        f"{_comparison(rows)}"
        f"## Every fheqnn row\n\n{markdown_table(ours)}\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{stem}.md"
    atomic_write_bytes(md, text.encode())
    pruning, tradeoff = folder / f"{stem}_latency.png", folder / f"{stem}_tradeoff.png"
    plot_pruning(records, pruning)
    plot_tradeoff(records, tradeoff)
    return [md, pruning, tradeoff]
