"""Accuracy and encrypted latency across pruning percentages (``fheqnn bench``).

For each data set and ``n_prune_neurons_percentage``: train the default network, compile it, and
measure cost and quality side by side (one JSON line per configuration): accuracy in the clear,
simulated and encrypted, PBS count, lookup precision, accumulator widths against the budget,
compile and key generation time, evaluation key and ciphertext sizes, latency per row (single
row and batch), the float MLP's accuracy, the ratio of latency to a measured lookup floor, and
the encrypted throughput (rows/s) of circuits that take 1, 8 or 32 rows per call.

Models are trained, compiled, saved and run through the public API (estimators, compiled-model
folders, client and server); the lookup-cost floor builds its own small circuits through our
Concrete seam. ``summary`` turns the rows into a markdown report and two PNG plots.

One job per module:

- ``options``: the profiles and :class:`BenchOptions`;
- ``measure``: measuring one compiled model (report, accuracies, keys, latency, throughput;
  ``fheqnn demo`` measures with it too);
- ``floor``: the lookup floor and a row's latency against it;
- ``baseline``: the float MLP baseline;
- ``cell``: one configuration trained, compiled and measured (:func:`bench_one`);
- ``sweep``: every cell (data set x width x pruning x compile profile x seed, and the
  reference's cells), rows appended to a JSON lines file, resumable;
- ``report``: the per-row markdown table;
- ``summary``: the sweep summed up per cell over seeds, the pick per data set, and the two
  plots (latency against pruning; accuracy against latency with Pareto fronts);
- ``reference``: the comparison with Concrete ML.
"""

from __future__ import annotations

from .baseline import float_mlp_accuracy
from .cell import bench_one, machine_load
from .floor import lookup_floor
from .measure import throughput
from .options import PROFILES, THROUGHPUT_BATCHES, BenchOptions
from .reference import (
    COMPARED,
    DEFAULT_REFERENCE_PYTHON,
    comparison_table,
    reference_row,
)
from .report import markdown_table
from .summary import aggregate, pareto_front, picks, picks_text, summary_table, write_sweep_report
from .sweep import REFERENCE, Cell, cells, read_rows, run_bench

__all__ = [
    "COMPARED",
    "DEFAULT_REFERENCE_PYTHON",
    "PROFILES",
    "REFERENCE",
    "THROUGHPUT_BATCHES",
    "BenchOptions",
    "Cell",
    "aggregate",
    "bench_one",
    "cells",
    "comparison_table",
    "float_mlp_accuracy",
    "lookup_floor",
    "machine_load",
    "markdown_table",
    "pareto_front",
    "picks",
    "picks_text",
    "read_rows",
    "reference_row",
    "run_bench",
    "summary_table",
    "throughput",
    "write_sweep_report",
]
