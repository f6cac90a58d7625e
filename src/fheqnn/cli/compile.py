"""``compile`` and ``report``: a compiled model folder, with the accumulator check."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..model.training_run import TrainingRun
from .common import EXIT_OK, CliError, _say, _Step
from .options import _compile_options


def _compile_speaking(compile_call: Any) -> Any:
    """Run a compilation; print what the accuracy guard warns about (``--strict``: error)."""
    import warnings

    from ..errors import CompileAccuracyWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileAccuracyWarning)
        result = compile_call()
    for warning in caught:
        if issubclass(warning.category, CompileAccuracyWarning):
            _say(f"warning: {warning.message} (--strict makes this an error)")
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return result


def _calibration_rows(path: str | Path, names: tuple[str, ...] | None) -> np.ndarray:
    """Calibration rows; a CSV with a header is matched to the trained ``names`` by name."""
    from ..tabular import MAX_TRAINING_BYTES, read_table

    table = read_table(path, target=None, max_bytes=MAX_TRAINING_BYTES, what="calibration")
    return _by_name(table, names, path)


def _by_name(table: Any, expected: Sequence[str] | None, path: str | Path) -> np.ndarray:
    """The rows of a file read by :func:`~fheqnn.tabular.read_table`, their columns in the
    ``expected`` order when both the file's header and the model know names (said when they
    are reordered)."""
    from ..contract import align_columns

    x, moved = align_columns(table.x, table.feature_names, expected, what=str(path))
    if moved:
        _say(
            f"{path}: columns matched to the model's features by name (the header's order differs)"
        )
    return x


def _nondeterminism_note(approximate: bool, p_error: Any) -> str | None:
    """The line that says a circuit is not bit-exact, and why; ``None`` when it is (``report``
    of a folder whose ``report.json`` has no stability record)."""
    reasons = []
    if approximate:
        reasons.append("approximate rounding")
    if p_error is not None:
        reasons.append(f"an error probability of {p_error:g} per lookup")
    if not reasons:
        return None
    return (
        f"note: not bit-exact ({' and '.join(reasons)}): the same encrypted row can decrypt to a "
        "different result from one run to the next (lookups that err; this report, written "
        "before stability was recorded, does not say what that costs in accuracy); compile "
        "with --exact for reproducible results"
    )


@dataclass
class _Sources:
    """Where ``compile`` takes each of its inputs from (``--from``, or the flags over it)."""

    onnx: str | Path | None
    calibration: str | Path | None
    output_spec: str | Path | None
    standardizer: str | Path | None
    n_accum_bits: int | None
    run: TrainingRun | None = None

    def inputs(self, from_dir: str | None) -> tuple[str, ...]:
        """The files read, which ``--out`` may not be or contain."""
        paths = (from_dir, self.onnx, self.calibration, self.output_spec, self.standardizer)
        return tuple(str(p) for p in paths if p)


def _sources(args: argparse.Namespace) -> _Sources:
    """The inputs of ``compile``: the flags given, the rest from the ``--from`` training run."""
    sources = _Sources(
        args.onnx, args.calibration, args.output_spec, args.standardizer, args.n_accum_bits
    )
    if not args.from_dir:
        return sources
    base = Path(args.from_dir)
    if not base.is_dir():
        raise CliError(
            f"--from {args.from_dir}: expected the folder of a training run ('fheqnn train "
            "--out FOLDER'), " + ("got a file" if base.exists() else "it does not exist")
        )
    run = TrainingRun.open(base)
    sources.run = run
    sources.onnx = sources.onnx or run.onnx
    sources.calibration = sources.calibration or run.calibration
    sources.output_spec = sources.output_spec or run.output_spec
    if sources.standardizer is None:
        sources.standardizer = run.standardizer
    if sources.n_accum_bits is None:
        sources.n_accum_bits, where = run.n_accum_bits()
        _say(
            f"accumulator budget: {sources.n_accum_bits} bits ({where}; --n-accum-bits overrides)"
            if sources.n_accum_bits is not None
            else f"accumulator budget: none checked ({where}; give --n-accum-bits)"
        )
    return sources


def _client_side(args: argparse.Namespace, sources: _Sources) -> tuple[Any, Any]:
    """The output spec and the standardizer the compiled model's client applies."""
    from ..contract import OutputSpec, Standardizer
    from ..errors import InvalidParameterError
    from ..runtime.artifacts import read_json_file

    spec = OutputSpec()
    if args.output_spec and not Path(args.output_spec).is_file():
        raise CliError(f"output spec file {args.output_spec!r} does not exist")
    spec_path = sources.output_spec
    if spec_path and Path(spec_path).is_file():
        spec = OutputSpec.from_dict(read_json_file(Path(spec_path), "output spec"))
    std_path = sources.standardizer
    if std_path is None:
        return spec, None
    if not Path(std_path).is_file():
        raise CliError(f"standardizer file {str(std_path)!r} does not exist")
    try:
        standardizer = Standardizer.from_dict(read_json_file(Path(std_path), "standardizer"))
    except (InvalidParameterError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{std_path} is not a standardizer (mean, scale): {exc}") from exc
    _say(f"input standardization: {std_path} (applied on the client, before quantization)")
    return spec, standardizer


def _calibration_labels(
    args: argparse.Namespace, sources: _Sources, n_rows: int
) -> np.ndarray | None:
    """The labels of the calibration rows, when there are any."""
    labels_path = args.calibration_labels
    # The run's labels belong to the run's own calibration rows, not to another --calibration.
    if labels_path is None and sources.run is not None and not args.calibration:
        labels_path = sources.run.calibration_labels
    if labels_path is None:
        return None
    from ..tabular import read_labels

    y_cal = read_labels(labels_path)
    if len(y_cal) != n_rows:
        raise CliError(f"{labels_path} has {len(y_cal)} labels for {n_rows} calibration rows")
    return y_cal


def cmd_compile(args: argparse.Namespace) -> int:
    from ..compiler.api import compile_onnx
    from ..runtime.artifacts import COMPILED_MODEL, check_destination

    sources = _sources(args)
    onnx_path, calibration = sources.onnx, sources.calibration
    if not onnx_path or not calibration:
        raise CliError("give --onnx and --calibration, or --from a training folder")
    spec, standardizer = _client_side(args, sources)
    options = _compile_options(args, n_accum_bits=sources.n_accum_bits, batch_size=args.batch_size)
    out = Path(args.out)
    inputs = sources.inputs(args.from_dir)
    check_destination(
        out,
        overwrite=args.overwrite,
        what="compiled model folder",
        kind=COMPILED_MODEL,
        inputs=inputs,
    )
    # The run's own network knows its columns by name; another --onnx does not.
    names = sources.run.feature_names() if sources.run is not None and not args.onnx else None
    x_cal = _calibration_rows(calibration, names)
    y_cal = _calibration_labels(args, sources, len(x_cal))
    with _Step(f"compiling {onnx_path} on {len(x_cal)} calibration rows"):
        model = _compile_speaking(
            lambda: compile_onnx(
                onnx_path,
                x_cal,
                options=options,
                output_spec=spec,
                standardizer=standardizer,
                calibration_labels=y_cal,
            )
        )
    # The client finds the columns of an input file by these names (predict, encrypt).
    if names is not None and len(names) == model.contract.n_features:
        from dataclasses import replace

        model.contract = replace(model.contract, feature_names=names)
    _say(model.report.to_text())
    from ..compiler.report import stability_text

    note = stability_text(model.stats.stability)
    if note:
        _say(note)
    # Checked again: something may have appeared there while compiling.
    check_destination(
        out, overwrite=args.overwrite, what="compiled model folder", kind=COMPILED_MODEL,
        inputs=inputs,
    )  # fmt: skip
    model.save(out, overwrite=args.overwrite)
    summary = model.summary()
    moved = _grids_moved(summary["rounding_grid_moved"], summary["layers"])
    if moved:
        _say(moved)
    _say(
        f"{model.pbs_count} PBS per row for {model.program.hidden_neurons()} hidden neurons, "
        f"{_rows_per_call(model.batch_size)}; saved to {out}/"
    )
    return EXIT_OK


def _grids_moved(moved: list[int] | None, layers: list[dict[str, Any]]) -> str | None:
    """How ``compile`` and ``report`` state the moved rounding grids (``None``: none moved)."""
    if not moved or not any(moved):
        return None
    hidden = [layer for layer in layers if layer.get("lookup_bits") is not None]
    counts = ", ".join(
        f"{n} of {layer.get('neurons', '?')} in {layer['layer']}"
        for n, layer in zip(moved, hidden, strict=False)
    )
    return f"rounding grids moved (align_rounding): {counts}"


def _rows_per_call(batch_size: int) -> str:
    """How ``compile`` and ``report`` state the batch size."""
    if batch_size == 1:
        return "1 row per circuit call"
    return (
        f"{batch_size} rows per circuit call (clients encrypt rows in chunks of {batch_size}, "
        "the last one padded)"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from ..compiler.report import BitWidthReport
    from ..runtime.artifacts import CLIENT_SPECS_FILE, PROGRAM_FILE, REPORT_FILE, open_model_folder

    folder = open_model_folder(args.model, need=(REPORT_FILE, CLIENT_SPECS_FILE, PROGRAM_FILE))
    data = folder.read_json(REPORT_FILE)
    if args.json:
        _say(json.dumps(data, indent=2))
        return EXIT_OK
    try:
        report = BitWidthReport.from_summary(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CliError(f"{folder.file(REPORT_FILE)} is not a report of ours: {exc!r}") from exc
    _say(f"compiled model {folder.model_id} from {data['source']}")
    _say(report.to_text())
    _say(
        f"PBS per row: {data['pbs_count']} ({data['hidden_neurons']} hidden neurons, "
        f"{data['removed_neurons']} dead neurons removed); max bit-width {data['max_bit_width']}; "
        f"compile {data['compile_seconds']:.1f} s"
    )
    batch_size = data.get("batch_size", 1)  # reports written before batching: one row
    _say(f"batch size: {_rows_per_call(batch_size)}")
    moved = _grids_moved(data.get("rounding_grid_moved"), data["layers"])
    if moved:
        _say(moved)
    from ..concrete_seam import key_sizes, load_client_specs

    sizes = key_sizes(load_client_specs(folder.read_bytes(CLIENT_SPECS_FILE)))
    _say(
        f"evaluation keys: {sizes.evaluation / 1e6:.1f} MB as generated and sent to a server "
        f"(evaluation.keys, {'compressed' if sizes.compressed else 'uncompressed'}), "
        f"{sizes.evaluation_full / 1e6:.1f} MB expanded on the server; ciphertext per "
        f"row: {data['input_ciphertext_bytes']} B in, {data['output_ciphertext_bytes']} B out"
    )
    program = folder.read_json(PROGRAM_FILE)  # checked against the manifest like every file
    layers = program.get("layers") if isinstance(program, dict) else None
    approximate = isinstance(layers, list) and any(
        isinstance(layer, dict)
        and layer.get("rounding_exact") is False
        and (layer.get("round_lsbs") or 0) > 0
        for layer in layers
    )
    p_error = data.get("p_error")
    from ..compiler.report import stability_text

    note = stability_text(data.get("stability")) or _nondeterminism_note(
        approximate, p_error if isinstance(p_error, float) else None
    )
    if note:
        _say(note)
    return EXIT_OK
