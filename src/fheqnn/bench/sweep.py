"""The sweep: every cell (data set x hidden width x pruning x compile profile x seed, and
the reference's cells when its environment is given) measured, each row appended to a JSON
lines file as soon as it is measured. A sweep that was interrupted resumes: the cells whose
rows the file already holds, measured with the same settings, are not measured again."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cell import bench_one
from .options import BenchOptions
from .reference import reference_row

#: The ``profile`` of the reference's rows (Concrete ML has one: bit-exact, 2**-40).
REFERENCE = "reference"


@dataclass(frozen=True)
class Cell:
    """One measurement of the sweep: ``profile`` is a compile profile or :data:`REFERENCE`."""

    dataset: str
    width: int
    prune: float
    profile: str
    seed: int

    def label(self) -> str:
        """``digits x2 prune 25% exact seed 1``."""
        return (
            f"{self.dataset} x{self.width} prune {100 * self.prune:.0f}% {self.profile} "
            f"seed {self.seed}"
        )


def cells(opts: BenchOptions) -> list[Cell]:
    """Every cell of the sweep, in the order they are measured (a data set's cells together,
    ours before the reference's at each (width, pruning, seed))."""
    profiles = [*opts.profiles, *([REFERENCE] if opts.reference_python else [])]
    return [
        Cell(dataset, width, prune, profile, seed)
        for dataset, width, prune, seed, profile in itertools.product(
            opts.datasets, opts.widths, opts.prune, opts.seeds, profiles
        )
    ]


def cell_of(row: dict[str, Any]) -> Cell:
    """The cell a row measured (rows written before widths and profiles were swept: the
    seed's width 4, and the profile the row records)."""
    profile = REFERENCE if row.get("system", "fheqnn") != "fheqnn" else row.get("profile")
    return Cell(
        row["dataset"],
        int(row.get("width", 4)),
        float(row["prune"]),
        profile or "default",
        int(row["seed"]),
    )


def run_bench(
    opts: BenchOptions,
    out: Path,
    progress: Callable[[str], Any] | None = None,
    bar: bool = True,
) -> list[dict]:
    """Measure every cell not yet in ``out`` with these settings; append each row to ``out``
    (JSON lines) as soon as it is measured. Returns the rows of every cell of the sweep (the
    ones found in ``out`` included)."""
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    settings = opts.settings()
    done: dict[Cell, dict] = {}
    if out.is_file():
        for row in read_rows(out):
            if row.get("settings") == settings:
                done[cell_of(row)] = row
    todo = cells(opts)
    rows, floors = [], {}
    with tqdm(total=len(todo), desc="cells", unit="cell", disable=not bar) as shown:
        for cell in todo:
            shown.set_postfix_str(cell.label())
            if cell in done:
                rows.append(done[cell])
                shown.update(1)
                continue
            if progress:
                progress(cell.label())
            row = _measure(cell, opts, floors)
            row["settings"] = settings
            rows.append(row)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            shown.update(1)
    return rows


def _measure(cell: Cell, opts: BenchOptions, floors: dict[Any, dict]) -> dict:
    if cell.profile == REFERENCE:
        assert opts.reference_python is not None
        row = reference_row(
            opts.reference_python,
            cell.dataset,
            cell.seed,
            opts.epochs,
            cell.prune,
            width=cell.width,
            rows=opts.encrypt_rows,
        )
        row.update(profile=REFERENCE, width=cell.width)
        return row
    each = dataclasses.replace(opts, seed=cell.seed, exact=cell.profile == "exact")
    return bench_one(cell.dataset, cell.prune, each, floors, width=cell.width)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSON lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
