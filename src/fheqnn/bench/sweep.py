"""The sweep: every (data set, pruning) configuration measured, each row appended to a JSON
lines file as soon as it is measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cell import bench_one
from .options import BenchOptions


def run_bench(opts: BenchOptions, out: Path, progress: Any = None) -> list[dict]:
    """Measure every (data set, pruning) pair; append each row to ``out`` (JSON lines)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, floors = [], {}
    for dataset in opts.datasets:
        for prune in opts.prune:
            if progress:
                progress(f"{dataset}, prune {prune:.2f}")
            row = bench_one(dataset, prune, opts, floors)
            rows.append(row)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSON lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
