"""``bench``: accuracy and encrypted latency across pruning percentages."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import EXIT_OK, CliError, _say
from .options import _DEFAULT
from .outputs import _check_typed_file_output, _is_jsonl_file


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import bench

    out = _check_typed_file_output(
        args.out, suffix=".jsonl", what="JSON lines", is_ours=_is_jsonl_file, overwrite=None
    )
    rows = None
    if not args.report_only:
        opts = _options(args)
        cells = bench.cells(opts)
        _say(
            f"benchmark profile {args.profile}: {len(cells)} cells ({opts.datasets} x width "
            f"{opts.widths} x prune {opts.prune} x {opts.profiles}"
            f"{' + reference' if opts.reference_python else ''} x seeds {opts.seeds}), "
            f"{opts.encrypt_rows} encrypted rows each; rows appended to {out} (a run "
            "interrupted resumes from the cells it has)"
        )
        rows = bench.run_bench(opts, out, bar=not args.verbose)
    if not out.is_file():
        raise CliError(f"no benchmark rows in {out}")
    if rows is None:
        rows = bench.read_rows(out)
    paths = bench.write_sweep_report(rows, Path(args.report_dir), stem=out.stem)
    records = bench.aggregate(rows)
    _say(bench.summary_table(records))
    _say(bench.picks_text(records))
    _say(f"wrote {', '.join(str(p) for p in paths)}")
    return EXIT_OK


def _options(args: argparse.Namespace) -> Any:
    """The sweep's options: the profile's preset, overridden by the flags (checked)."""
    from .. import bench
    from ..compiler.options import MAX_BATCH_SIZE

    if args.exact and args.approximate:
        raise CliError("give --exact or --approximate, not both")
    if args.exact and args.compile_profiles and args.compile_profiles != ["exact"]:
        raise CliError("--exact measures the exact profile only: give it or --compile-profiles")
    if args.seed is not None and args.seeds:
        raise CliError("give --seed or --seeds, not both")
    preset = dict(bench.PROFILES[args.profile])
    seeds = args.seeds or ([args.seed] if args.seed is not None else preset["seeds"])
    opts = bench.BenchOptions(
        datasets=args.datasets or preset["datasets"],
        prune=list(dict.fromkeys(args.prune if args.prune is not None else preset["prune"])),
        epochs=args.epochs or preset["epochs"],
        encrypt_rows=preset["encrypt_rows"] if args.rows is None else args.rows,
        repeats=preset["repeats"] if args.repeats is None else args.repeats,
        float_baseline=preset["float_baseline"],
        rounding=args.rounding,
        approximate=args.approximate,
        p_error=args.p_error,
        throughput_rows=preset["throughput_rows"]
        if args.throughput_rows is None
        else args.throughput_rows,
        throughput_batches=tuple(args.throughput_batches or bench.THROUGHPUT_BATCHES),
        max_unstable="default" if args.max_unstable is _DEFAULT else args.max_unstable,
        widths=list(dict.fromkeys(args.widths or preset["widths"])),
        profiles=["exact"] if args.exact else (args.compile_profiles or preset["profiles"]),
        seeds=list(dict.fromkeys(seeds)),
        reference_python=(args.reference_python or bench.DEFAULT_REFERENCE_PYTHON)
        if args.compare_reference
        else None,
    )
    for p in opts.prune:
        if not 0.0 <= p < 1.0:
            raise CliError(f"--prune values must be in [0, 1), got {p}")
    for w in opts.widths:
        if not 1 <= w <= 64:
            raise CliError(f"--widths values must be in [1, 64], got {w}")
    if opts.throughput_rows < 0:
        raise CliError(f"--throughput-rows must be >= 0, got {opts.throughput_rows}")
    for size in opts.throughput_batches:
        if not 1 <= size <= MAX_BATCH_SIZE:
            raise CliError(
                f"--throughput-batches values must be in [1, {MAX_BATCH_SIZE}], got {size}"
            )
    if opts.reference_python and not Path(opts.reference_python).is_file():
        raise CliError(
            f"--compare-reference: no reference interpreter at {opts.reference_python}; make "
            "it once with 'python -m venv /work/refenv && /work/refenv/bin/pip install "
            '"concrete-ml==1.9.*"\' or give --reference-python'
        )
    return opts
