"""The benchmark's report: its rows as a markdown table and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The columns of :func:`markdown_table`.
_TABLE_HEAD = (
    "data set",
    "prune",
    "rounding",
    "p_error",
    "acc float MLP",
    "acc clear",
    "acc sim",
    "acc enc (rows)",
    "PBS",
    "lookup bits",
    "acc bits proven/measured/allowed",
    "compile s",
    "keygen s",
    "eval keys MB",
    "ct in/out B",
    "latency 1 row s",
    "batch s/row",
    "floor s",
    "ratio",
    "rows/s by rows per call",
    "floor rows/s",
)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _throughput_cell(rates: dict[str, float] | None) -> str:
    """``1: 1.85, 8: 2.47, 32: 2.61`` (rows per call: rows/s)."""
    if not rates:
        return "-"
    return ", ".join(f"{size}: {rate:.2f}" for size, rate in rates.items())


def _table_cells(r: dict) -> list[str]:
    """One row's cells, in the order of ``_TABLE_HEAD``."""
    proven = max(layer["proven_bits"] for layer in r["layers"])
    measured = max(layer["measured_bits"] or 0 for layer in r["layers"])
    lookups = "/".join(str(layer["lookup_bits"]) for layer in r["layers"] if layer["lookup_bits"])
    enc = "-" if "acc_encrypted" not in r else f"{r['acc_encrypted']:.3f} ({r['encrypted_rows']})"
    cts = (
        "-"
        if "ciphertext_in_bytes_per_row" not in r
        else (f"{r['ciphertext_in_bytes_per_row']}/{r['ciphertext_out_bytes_per_row']}")
    )
    return [
        r["dataset"],
        f"{r['prune']:.2f}",
        r.get("rounding", "exact"),
        "default" if r.get("p_error") is None else f"{r['p_error']:g}",
        _fmt(r.get("acc_float_mlp")),
        _fmt(r["acc_clear"]),
        _fmt(r["acc_simulated"]),
        enc,
        str(r["pbs"]),
        lookups,
        f"{proven}/{measured}/{r['n_accum_bits']}",
        _fmt(r["compile_s"], ".1f"),
        _fmt(r.get("keygen_s"), ".1f"),
        _fmt(r.get("eval_keys_mb"), ".1f"),
        cts,
        _fmt(r.get("latency_single_s")),
        _fmt(r.get("latency_batch_s_per_row")),
        _fmt(r.get("floor_s")),
        _fmt(r.get("latency_over_floor"), ".2f"),
        _throughput_cell(r.get("throughput_rows_s")),
        _fmt(r.get("floor_rows_s"), ".2f"),
    ]


def markdown_table(rows: list[dict]) -> str:
    """One line per configuration, cost and quality side by side."""
    lines = ["| " + " | ".join(_TABLE_HEAD) + " |", "|" + "---|" * len(_TABLE_HEAD)]
    lines += ["| " + " | ".join(_table_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Latency and accuracy against pruning percentage, one line per data set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for dataset in sorted({r["dataset"] for r in rows}):
        sel = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["prune"])
        prune = [100 * r["prune"] for r in sel]
        if any("latency_single_s" in r for r in sel):
            ax_lat.plot(prune, [r.get("latency_single_s") for r in sel], "o-", label=dataset)
        else:
            ax_lat.plot(prune, [r["pbs"] for r in sel], "o-", label=dataset)
        ax_acc.plot(
            prune, [100 * r["acc_simulated"] for r in sel], "o-", label=f"{dataset} simulated"
        )
        if any("acc_float_mlp" in r for r in sel):
            ax_acc.plot(
                prune,
                [100 * r.get("acc_float_mlp", np.nan) for r in sel],
                "x--",
                label=f"{dataset} float MLP",
            )
    encrypted = any("latency_single_s" in r for r in rows)
    ax_lat.set_ylabel("encrypted latency per row (s)" if encrypted else "PBS per row")
    ax_lat.set_title("cost" + ("" if encrypted else " (simulation profile: PBS count)"))
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("accuracy")
    for ax in (ax_lat, ax_acc):
        ax.set_xlabel("hidden neurons pruned (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], folder: Path, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.md`` (table) and ``<stem>.png`` (plot) into ``folder``."""
    from ..fileio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{stem}.md"
    loads = [r.get("load_before") for r in rows if r.get("load_before") is not None]
    header = (
        f"# fheqnn benchmark\n\n{len(rows)} configurations; machine load (1-min average) "
        f"before runs: {min(loads, default=0):.2f} to {max(loads, default=0):.2f}.\n"
        "ratio = single-row latency / (PBS x measured cost of one lookup at the circuit's "
        "lookup precision, batched). rows/s by rows per call: encrypted throughput (encrypt, "
        "run, decrypt) over the same test rows of circuits compiled for 1, 8, ... rows per "
        "call (1: one call per row); floor rows/s = 1 / floor s.\n\n"
    )
    atomic_write_bytes(md, (header + markdown_table(rows) + "\n").encode())
    png = folder / f"{stem}.png"
    plot(rows, png)
    return md, png
