"""The benchmark's report: its rows as a markdown table and a PNG plot."""

from __future__ import annotations

from typing import Any

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
