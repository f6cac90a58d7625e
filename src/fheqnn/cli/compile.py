"""``compile`` and ``report``: a compiled model folder, with the accumulator check."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import EXIT_OK, CliError, _say, _Step
from .options import _compile_options

#: Labels of a training folder's calibration rows (written by 'train', read by 'compile --from').
CALIBRATION_LABELS = "calibration_labels.npy"


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


def _train_info(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A training folder's ``train.json``, read once: ``(info, None)``, ``(None, None)`` when it
    has none (older folders), or ``(None, why)`` when it is not a JSON object."""
    info_path = folder / "train.json"
    if not info_path.is_file():
        return None, None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{info_path} is not valid JSON: {exc}"
    return (info, None) if isinstance(info, dict) else (None, None)


def _trained_feature_names(info: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The feature columns' names a training run recorded (a CSV header), else ``None``."""
    names = None if info is None else info.get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if len(set(names)) != len(names):
        return None  # a header that repeats a name cannot find columns by name
    return tuple(names)


def _trained_n_accum_bits(
    folder: Path, info: dict[str, Any] | None, error: str | None
) -> tuple[int | None, str]:
    """The accumulator budget a training folder was trained for, and where it was found.

    ``train.json`` (``info``, as :func:`_train_info` read it) records it; folders written
    before it did fall back to the pickled estimator's module.
    """
    if error is not None:
        raise CliError(error)
    bits = None if info is None else info.get("n_accum_bits")
    if isinstance(bits, int) and not isinstance(bits, bool):
        return bits, f"the trained module's, from {folder / 'train.json'}"
    pickled = folder / "estimator.pkl"
    if pickled.is_file():
        try:
            bits = pickle.loads(pickled.read_bytes()).module_.n_accum_bits
        except Exception as exc:  # an old or foreign pickle: no budget rather than a crash
            logging.getLogger(__name__).info("no n_accum_bits in %s: %s", pickled, exc)
        else:
            return int(bits), f"the trained module's, from {pickled} (older folder)"
    return None, f"{folder} records no n_accum_bits"


#: What ``compile --approximate`` and ``report`` say about approximate rounding.
def _nondeterminism_note(approximate: bool, p_error: Any) -> str | None:
    """The line that says a circuit is not bit-exact, and why; ``None`` when it is."""
    reasons = []
    if approximate:
        reasons.append("approximate rounding")
    if p_error is not None:
        reasons.append(f"an error probability of {p_error:g} per lookup")
    if not reasons:
        return None
    return (
        f"note: not bit-exact ({' and '.join(reasons)}): the same encrypted row can decrypt to a "
        "different result from one run to the next (rare off-by-one lookups, whose cost in "
        "accuracy was checked by simulation at compile time); compile with --exact --p-error "
        "default for reproducible results"
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from ..compiler.api import compile_onnx
    from ..contract import OutputSpec, Standardizer
    from ..errors import InvalidParameterError
    from ..runtime.artifacts import COMPILED_MODEL, check_destination, read_json_file

    onnx_path, calibration, spec_path = args.onnx, args.calibration, args.output_spec
    std_path = args.standardizer
    n_accum_bits = args.n_accum_bits
    if args.from_dir:
        base = Path(args.from_dir)
        if not base.is_dir():
            raise CliError(
                f"--from {args.from_dir}: expected the folder of a training run ('fheqnn train "
                "--out FOLDER'), " + ("got a file" if base.exists() else "it does not exist")
            )
        onnx_path = onnx_path or base / "model.onnx"
        calibration = calibration or base / "calibration.npy"
        spec_path = spec_path or base / "output_spec.json"
        # Training folders written before standardization existed have none: their network
        # takes the rows as they are.
        if std_path is None and (base / "standardizer.json").is_file():
            std_path = base / "standardizer.json"
        info, info_error = _train_info(base)
        if n_accum_bits is None:
            n_accum_bits, where = _trained_n_accum_bits(base, info, info_error)
            _say(
                f"accumulator budget: {n_accum_bits} bits ({where}; --n-accum-bits overrides)"
                if n_accum_bits is not None
                else f"accumulator budget: none checked ({where}; give --n-accum-bits)"
            )
    if not onnx_path or not calibration:
        raise CliError("give --onnx and --calibration, or --from a training folder")
    spec = OutputSpec()
    if args.output_spec and not Path(args.output_spec).is_file():
        raise CliError(f"output spec file {args.output_spec!r} does not exist")
    if spec_path and Path(spec_path).is_file():
        spec = OutputSpec.from_dict(read_json_file(Path(spec_path), "output spec"))
    standardizer = None
    if std_path is not None:
        if not Path(std_path).is_file():
            raise CliError(f"standardizer file {str(std_path)!r} does not exist")
        try:
            standardizer = Standardizer.from_dict(read_json_file(Path(std_path), "standardizer"))
        except (InvalidParameterError, KeyError, TypeError, ValueError) as exc:
            raise CliError(f"{std_path} is not a standardizer (mean, scale): {exc}") from exc
        _say(f"input standardization: {std_path} (applied on the client, before quantization)")
    options = _compile_options(args, n_accum_bits=n_accum_bits, batch_size=args.batch_size)
    out = Path(args.out)
    inputs = tuple(
        str(p) for p in (args.from_dir, onnx_path, calibration, spec_path, std_path) if p
    )
    check_destination(
        out,
        overwrite=args.overwrite,
        what="compiled model folder",
        kind=COMPILED_MODEL,
        inputs=inputs,
    )
    # The run's own network knows its columns by name; another --onnx does not.
    names = _trained_feature_names(info) if args.from_dir and not args.onnx else None
    x_cal = _calibration_rows(calibration, names)
    labels_path = args.calibration_labels
    # The run's labels belong to the run's own calibration rows, not to another --calibration.
    if (
        labels_path is None
        and args.from_dir
        and not args.calibration
        and (base / CALIBRATION_LABELS).is_file()
    ):
        labels_path = base / CALIBRATION_LABELS
    y_cal = None
    if labels_path is not None:
        from ..tabular import read_labels

        y_cal = read_labels(labels_path)
        if len(y_cal) != len(x_cal):
            raise CliError(
                f"{labels_path} has {len(y_cal)} labels for {len(x_cal)} calibration rows"
            )
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
    note = _nondeterminism_note(
        any(layer.round_lsbs and not layer.rounding_exact for layer in model.program.layers),
        model.stats.p_error,
    )
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
    from ..compiler.report import BitWidthReport, LayerWidths
    from ..runtime.artifacts import CLIENT_SPECS_FILE, PROGRAM_FILE, REPORT_FILE, open_model_folder

    folder = open_model_folder(args.model, need=(REPORT_FILE, CLIENT_SPECS_FILE, PROGRAM_FILE))
    data = folder.read_json(REPORT_FILE)
    if args.json:
        _say(json.dumps(data, indent=2))
        return EXIT_OK
    fields = set(LayerWidths.__dataclass_fields__)
    try:
        rows = tuple(
            LayerWidths(**{k: v for k, v in d.items() if k in fields}) for d in data["layers"]
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CliError(f"{folder.file(REPORT_FILE)} is not a report of ours: {exc!r}") from exc
    _say(f"compiled model {folder.model_id} from {data['source']}")
    _say(BitWidthReport(rows, data["n_accum_bits"]).to_text())
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
    note = _nondeterminism_note(approximate, p_error if isinstance(p_error, float) else None)
    if note:
        _say(note)
    return EXIT_OK
