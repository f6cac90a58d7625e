"""``bench``: accuracy and encrypted latency across pruning percentages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import EXIT_OK, CliError, _say
from .options import _DEFAULT
from .outputs import _check_typed_file_output, _is_jsonl_file


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import bench
    from ..compiler.options import MAX_BATCH_SIZE

    out = _check_typed_file_output(
        args.out, suffix=".jsonl", what="JSON lines", is_ours=_is_jsonl_file, overwrite=None
    )
    if args.exact and args.approximate:
        raise CliError("give --exact or --approximate, not both")
    if not args.report_only:
        preset = dict(bench.PROFILES[args.profile])
        opts = bench.BenchOptions(
            datasets=args.datasets or preset["datasets"],
            prune=args.prune if args.prune is not None else preset["prune"],
            epochs=args.epochs or preset["epochs"],
            encrypt_rows=preset["encrypt_rows"] if args.rows is None else args.rows,
            repeats=preset["repeats"] if args.repeats is None else args.repeats,
            float_baseline=preset["float_baseline"],
            seed=args.seed,
            rounding=args.rounding,
            approximate=args.approximate,
            p_error=args.p_error,
            throughput_rows=preset["throughput_rows"]
            if args.throughput_rows is None
            else args.throughput_rows,
            throughput_batches=tuple(args.throughput_batches or bench.THROUGHPUT_BATCHES),
            exact=args.exact,
            max_unstable="default" if args.max_unstable is _DEFAULT else args.max_unstable,
        )
        for p in opts.prune:
            if not 0.0 <= p < 1.0:
                raise CliError(f"--prune values must be in [0, 1), got {p}")
        if opts.throughput_rows < 0:
            raise CliError(f"--throughput-rows must be >= 0, got {opts.throughput_rows}")
        for size in opts.throughput_batches:
            if not 1 <= size <= MAX_BATCH_SIZE:
                raise CliError(
                    f"--throughput-batches values must be in [1, {MAX_BATCH_SIZE}], got {size}"
                )
        throughput = (
            f", throughput over {opts.throughput_rows} rows at "
            f"{'/'.join(map(str, opts.throughput_batches))} rows per call"
            if opts.throughput_rows
            else ""
        )
        _say(
            f"benchmark profile {args.profile}: {opts.datasets} x prune {opts.prune}, "
            f"{opts.encrypt_rows} encrypted rows each{throughput}; rows appended to {out}"
        )
        rows = bench.run_bench(opts, out, progress=lambda what: _say(f"- {what}"))
        if args.compare_reference:
            _compare_reference(args, opts, rows)
    if not out.is_file():
        raise CliError(f"no benchmark rows in {out}")
    md, png = bench.write_report(bench.read_rows(out), Path(args.report_dir), stem=out.stem)
    _say(md.read_text())
    _say(f"wrote {md} and {png}")
    return EXIT_OK


def _compare_reference(args: argparse.Namespace, opts: Any, rows: list[dict[str, Any]]) -> None:
    """Concrete ML's network on each row's data set and pruning, side by side with ours:
    comparison.md / .jsonl / .png in ``--report-dir``."""
    from .. import bench

    pairs = []
    for row in rows:
        _say(f"- reference (Concrete ML 1.9) on {row['dataset']}, prune {row['prune']}")
        try:
            ref = bench.reference_row(
                args.reference_python or bench.DEFAULT_REFERENCE_PYTHON,
                row["dataset"],
                opts.seed,
                opts.epochs,
                row["prune"],
            )
        except (FileNotFoundError, RuntimeError) as exc:
            raise CliError(str(exc)) from exc
        pairs.append((row, ref))
    from ..fileio import atomic_write_bytes

    folder = Path(args.report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    table = bench.comparison_table(pairs)
    atomic_write_bytes(folder / "comparison.md", (table + "\n").encode())
    with (folder / "comparison.jsonl").open("a") as handle:
        for ours, ref in pairs:
            handle.write(json.dumps({"fheqnn": ours, "reference": ref}) + "\n")
    bench.plot_comparison(pairs, folder / "comparison.png")
    _say(table)
