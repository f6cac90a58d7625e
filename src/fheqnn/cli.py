"""The ``fheqnn`` command-line tool: the whole flow, one subcommand per step.

    train -> export -> compile (bit-width check) -> report -> keygen -> encrypt -> run -> decrypt
    predict = encrypt -> run -> decrypt locally;  demo = everything on a shipped data set

Library code logs; this module is the one place that prints. Exit codes: 0 success, 1 an
unexpected failure, 2 bad input or usage, 3 accumulator budget exceeded, 130 interrupted (Ctrl-C:
one line, nothing half-written), 141 the output pipe closed (``fheqnn report M | head -1``).
"""

from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "fheqnn":
    # Ctrl-C while the modules below load (before main() can catch it): one line, no traceback.
    def _interrupted_while_starting(*_: object) -> None:
        os.write(2, b"fheqnn: interrupted\n")
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_while_starting)

import argparse
import contextlib
import json
import logging
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DATASETS

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_ACCUMULATOR = 0, 1, 2, 3
#: Least rows per request of `predict --server` (rounded up to whole circuit calls).
DEFAULT_REQUEST_ROWS = 8
#: Whether this process is the ``fheqnn`` program (not a caller of :func:`main` in Python):
#: only then do steps run in child processes.
AS_PROGRAM = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "fheqnn"
#: Ctrl-C (128 + SIGINT), and a closed output pipe (128 + SIGPIPE), as shells report them.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class CliError(Exception):
    """A usage problem found by the CLI itself (exit code 2)."""


def _say(message: str) -> None:
    print(message, flush=True)


def _rows(n: int) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} row" if n == 1 else f"{n} rows"


class _Step:
    """Prints a long step's start and, at the end, how long it took."""

    def __init__(self, title: str) -> None:
        self.title = title

    #: Whether a step's line is waiting for its end (an interrupt ends it).
    open = False

    def __enter__(self) -> _Step:
        print(f"{self.title} ...", end="", flush=True)
        _Step.open = True
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        _Step.open = False
        if exc_type is KeyboardInterrupt:
            _Step.open = True  # _interrupted() ends the line
            return
        print(f" {'done' if exc_type is None else 'failed'} ({self.seconds:.1f} s)", flush=True)


# ----------------------------------------------------------------------------- data files


def _save_array(path: Path, array: np.ndarray) -> None:
    import io

    from .fileio import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _check_output_file(
    path: str | Path, *, inputs: Sequence[Any] = (), envelope: bool, overwrite: bool = True
) -> Path:
    """Refuse an output file that is a folder, one of the command's inputs, or (for
    ciphertext outputs, ``envelope``) an existing file that is not an envelope of ours, or one
    that is when ``overwrite`` is false (encrypted results can take hours to compute)."""
    path = Path(path)
    if str(path).strip() == "":
        raise CliError("--out is empty: name a file to write")
    if path.is_dir():
        raise CliError(f"--out {path} is a folder: name a file to write")
    for source in inputs:
        if source and Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise CliError(f"--out {path} is also an input of this command; write to another file")
    if envelope and path.is_file():
        from .runtime.envelope import MAGIC, MAGIC_V1

        with open(path, "rb") as handle:
            head = handle.read(len(MAGIC))
        if head not in (MAGIC, MAGIC_V1):
            raise CliError(
                f"--out {path} exists and is not an fheqnn ciphertext file: it is never "
                "replaced; remove it yourself or write to another file"
            )
        if not overwrite:
            raise CliError(f"--out {path} exists; pass --overwrite to replace it")
    parent = path.resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {path}: {parent} is not writable by this user")
    return path


def _is_npy_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(6) == b"\x93NUMPY"


#: Predictions printed in full up to this many values; beyond, numpy shows the first and
#: last 3 rows.
PRINTED_PREDICTIONS = 200


def _is_predictions_csv(path: Path) -> bool:
    """Whether ``path`` is a table of predictions as this tool writes them: every cell of its
    header is ``prediction``, ``prediction_<n>`` or ``proba_<class>``, but for a first column
    of row ids (``predict --id``) (nothing else is ever replaced: a user's table with one such
    column among others is not ours)."""
    import csv
    import re

    with open(path, "rb") as handle:
        first = handle.readline(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        header = next(csv.reader([first]), [])
    except csv.Error:
        return False
    ours = re.compile(r"prediction(_\d+)?|proba_.*")
    if len(header) >= 2 and not ours.fullmatch(header[0]):
        header = header[1:]  # the row ids' column
    return bool(header) and all(ours.fullmatch(cell) for cell in header)


def _check_predictions_output(args: argparse.Namespace, *, inputs: Sequence[Any]) -> Path | None:
    """``--out`` of ``predict`` / ``decrypt``, checked before any work: a ``.csv`` table or a
    ``.npy`` array, replaced only with ``--overwrite`` and (a table) only if it is one of ours."""
    if args.out is None:
        return None
    path = _check_output_file(args.out, inputs=inputs, envelope=False)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npy"):
        raise CliError(
            f"--out {path} must end in .csv (a table, one row per input row) or .npy (a "
            "NumPy array)"
        )
    csv_file = suffix == ".csv"
    return _check_typed_file_output(
        path,
        suffix=suffix,
        what="a table of predictions written by fheqnn" if csv_file else "a NumPy .npy file",
        is_ours=_is_predictions_csv if csv_file else _is_npy_file,
        overwrite=args.overwrite,
        inputs=inputs,
        folders=(args.model, args.keys),
    )


def _prediction_table(
    pred: np.ndarray,
    classes: Sequence[Any] | None,
    proba: bool,
    ids: tuple[Sequence[str], str] | None = None,
) -> bytes:
    """CSV text of predictions, one line per row under a header: ``prediction`` (one value per
    row), ``prediction_0``... (several outputs) or ``proba_<class>`` (class probabilities),
    after the row ids' column when ``ids`` = (values, column name) are given. Class labels are
    written as the training file's labels were read (text stays text); floats with every
    digit kept."""
    import csv
    import io

    values = pred.reshape(len(pred), -1)
    if proba:
        names = classes if classes is not None and len(classes) == values.shape[1] else None
        header = [f"proba_{c}" for c in (range(values.shape[1]) if names is None else names)]
    elif pred.ndim == 1:
        header = ["prediction"]
    else:
        header = [f"prediction_{i}" for i in range(values.shape[1])]

    def cell(value: Any) -> str:
        value = value.item() if hasattr(value, "item") else value
        return repr(value) if isinstance(value, float) else str(value)

    rows = [[cell(v) for v in row] for row in values]
    if ids is not None:
        header = [ids[1], *header]
        rows = [[row_id, *row] for row_id, row in zip(ids[0], rows, strict=True)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _give_predictions(
    out: Path | None,
    pred: np.ndarray,
    recheck: Any = None,
    *,
    classes: Sequence[Any] | None = None,
    proba: bool = False,
    ids: tuple[Sequence[str], str] | None = None,
) -> None:
    """Write the predictions to ``out`` (atomically), or print them. ``recheck()`` repeats the
    checks of ``out`` first (a file may have appeared there while rows were encrypted). If the
    file cannot be written, the predictions are printed in full instead of being lost."""
    if out is None:
        _say(np.array2string(pred, threshold=PRINTED_PREDICTIONS))
        if pred.size > PRINTED_PREDICTIONS and len(pred) > 6:
            _say(f"(the first and last 3 of {len(pred)} rows; --out FILE.csv writes them all)")
        return
    try:
        if recheck is not None:
            recheck()
        if out.suffix.lower() == ".npy":
            _save_array(out, pred)
        else:
            _write_bytes(out, _prediction_table(pred, classes, proba, ids))
    except (CliError, OSError) as exc:
        _say(np.array2string(pred, threshold=sys.maxsize))
        raise CliError(f"{exc}; the {_rows(len(pred))} of predictions are printed above") from exc
    _say(f"wrote {out} ({_rows(len(pred))})")


def _is_onnx_file(path: Path) -> bool:
    import onnx

    if path.stat().st_size > 1 << 30:
        return False
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # any parse failure: not an ONNX model
        return False
    return len(model.graph.node) > 0


def _is_jsonl_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        first = handle.readline(1 << 20).strip()
    if not first:
        return path.stat().st_size == 0
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _check_typed_file_output(
    path: str | Path,
    *,
    suffix: str,
    what: str,
    is_ours: Any,
    overwrite: bool | None,
    inputs: Sequence[Any] = (),
    folders: Sequence[Any] = (),
) -> Path:
    """Refuse a single-file ``--out`` that could destroy something: besides
    :func:`_check_output_file`'s checks, it must end in ``suffix``, lie outside the command's
    input ``folders`` and outside any compiled model, key folder or training run (at any
    depth: ``--overwrite`` on such a folder would delete the file with it), and an existing file is
    replaced only with ``overwrite`` and only if ``is_ours(path)`` says it is a file of the
    same kind (``overwrite=None``: the command appends, so only the kind is checked)."""
    from .runtime.artifacts import COMPILED_MODEL, KEY_FOLDER, TRAINING_RUN, folder_kind

    path = _check_output_file(path, inputs=inputs, envelope=False)
    if path.suffix.lower() != suffix:
        raise CliError(f"--out {path} must end in {suffix} (this command writes {what})")
    resolved = path.resolve()
    for folder in folders:
        if folder and Path(folder).is_dir() and Path(folder).resolve() in resolved.parents:
            raise CliError(
                f"--out {path} is inside {folder}, an input of this command; write elsewhere"
            )
    for parent in resolved.parents:
        kind = folder_kind(parent) if parent.is_dir() else None
        if kind in (COMPILED_MODEL, KEY_FOLDER, TRAINING_RUN):
            raise CliError(
                f"--out {path} is inside a {kind} ({parent}), whose files are never replaced "
                "or added to; write elsewhere"
            )
    if path.exists():
        if not is_ours(path):
            raise CliError(
                f"--out {path} exists and is not {what}: it is never replaced; remove it "
                "yourself or write to another file"
            )
        if overwrite is False:
            raise CliError(f"--out {path} exists; pass --overwrite to replace it")
    return path


def _write_bytes(path: str | Path, data: bytes) -> None:
    from .fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _read_envelope(path: str | Path, what: str, max_bytes: int) -> bytes:
    from .runtime.envelope import read_envelope_file

    return read_envelope_file(path, max_bytes=max_bytes, what=what)


# ----------------------------------------------------------------------------- train / export


def _add_predictions_output(p: argparse.ArgumentParser) -> None:
    """``--out`` / ``--overwrite`` of the commands that give predictions."""
    p.add_argument(
        "--out", help="file to write: .csv (one row per input row) or .npy (default: print)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (a .csv only if it is a table of predictions)",
    )


def _add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-layers", type=int, default=3, help="linear layers (default 3)")
    p.add_argument(
        "--multiplier", type=float, default=4, help="hidden width = features x this (default 4)"
    )
    p.add_argument("--n-w-bits", type=int, default=3, help="weight bits (default 3)")
    p.add_argument("--n-a-bits", type=int, default=3, help="activation/input bits (default 3)")
    p.add_argument("--n-accum-bits", type=int, default=8, help="accumulator budget (default 8)")
    p.add_argument(
        "--prune",
        type=float,
        default=0.0,
        help="fraction of hidden neurons to prune, in [0, 1) (default 0)",
    )
    p.add_argument("--epochs", type=int, default=200, help="training epochs (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _estimator(args: argparse.Namespace, task: str) -> Any:
    from . import NeuralNetClassifier, NeuralNetRegressor

    cls = NeuralNetClassifier if task == "classifier" else NeuralNetRegressor
    multiplier = int(args.multiplier) if float(args.multiplier).is_integer() else args.multiplier
    return cls(
        module__n_layers=args.n_layers,
        module__n_hidden_neurons_multiplier=multiplier,
        module__n_w_bits=args.n_w_bits,
        module__n_a_bits=args.n_a_bits,
        module__n_accum_bits=args.n_accum_bits,
        module__n_prune_neurons_percentage=args.prune,
        max_epochs=args.epochs,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )


def _training_data(args: argparse.Namespace) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """The train/test split of the training data, and what to record of its columns.

    Every check on the file (and on the labels: classes, rows per class) runs here, before
    anything is trained or written.
    """
    from .tabular import MAX_TRAINING_BYTES, check_training_rows, read_labels, read_table

    if args.dataset:
        if args.data or args.labels or args.target is not None:
            raise CliError("--dataset cannot be combined with --data, --labels or --target")
        from .datasets import load_split

        return load_split(args.dataset), {"data": args.dataset}
    if not args.data:
        raise CliError("give --dataset NAME or --data FILE (.csv or .npy)")
    if args.labels and args.target is not None:
        raise CliError(
            "give either --labels FILE (every column of --data is a feature) or --target COLUMN "
            "(the target is a column of --data), not both"
        )
    header = {"auto": None, "yes": True, "no": False}[args.header]
    target = None if args.labels else (-1 if args.target is None else args.target)
    table = read_table(
        args.data, target=target, header=header, max_bytes=MAX_TRAINING_BYTES, what="data"
    )
    x, y = table.x, table.y
    source = str(args.data)
    if args.labels:
        y = read_labels(args.labels, max_bytes=MAX_TRAINING_BYTES)
        source = f"{args.data} with labels {args.labels}"
        if len(y) != len(x):
            raise CliError(
                f"{args.data} has {len(x)} data rows but {args.labels} has {len(y)} labels; "
                "expected one label per row"
            )
    assert y is not None  # a target column or a labels file
    check_training_rows(y, args.task, source=source)
    if args.task == "classifier" and np.asarray(y).dtype.kind in "fiu":
        values = np.unique(y)
        whole = bool(np.all(np.mod(values, 1) == 0))
        if not whole or len(values) > 10:
            _say(
                f"note: the target holds {len(values)} distinct numbers"
                + ("" if whole else ", not all whole")
                + ": training a classifier, one class per value (give --task regressor to "
                "predict numbers)"
            )
    if args.task == "regressor":
        y = y.astype(np.float64)
    from sklearn.model_selection import train_test_split

    stratify = y if args.task == "classifier" else None
    split = tuple(train_test_split(x, y, test_size=0.25, stratify=stratify, random_state=0))
    info = {
        "data": source,
        "feature_names": None if table.feature_names is None else list(table.feature_names),
        "target_name": table.target_name,
    }
    return split, info


def cmd_train(args: argparse.Namespace) -> int:
    from .runtime.artifacts import TRAINING_RUN, check_destination

    out = Path(args.out)
    inputs = tuple(p for p in (args.data, args.labels) if p)
    check_destination(
        out, overwrite=args.overwrite, what="training folder", kind=TRAINING_RUN, inputs=inputs
    )
    (x_tr, x_te, y_tr, y_te), data_info = _training_data(args)
    est = _estimator(args, args.task)
    _say(f"training a {args.task} on {len(x_tr)} rows x {x_tr.shape[1]} features")
    start = time.perf_counter()
    est.fit(x_tr, y_tr)
    fit_s = time.perf_counter() - start
    from .interrupts import raise_if_interrupted

    raise_if_interrupted()  # a Ctrl-C that something swallowed: nothing is written
    from .contract import range_warnings_off

    with range_warnings_off():  # the test part of the training data itself
        score = float(est.score(x_te, y_te))
    from .runtime.artifacts import write_folder_atomically

    def write(folder: Path) -> None:
        (folder / "estimator.pkl").write_bytes(pickle.dumps(est))
        est.export_onnx(folder / "model.onnx")
        for name, arr in (("calibration", x_tr), ("test_x", x_te), ("test_y", y_te)):
            np.save(folder / f"{name}.npy", np.asarray(arr), allow_pickle=False)
        labels = np.asarray(y_tr)
        # Labels of the calibration rows: 'compile --from' guards accuracy with them.
        np.save(
            folder / CALIBRATION_LABELS,
            labels.astype(str) if labels.dtype == object else labels,
            allow_pickle=False,
        )
        (folder / "output_spec.json").write_text(json.dumps(est.output_spec_.to_dict()))
        # The network was trained on standardized rows: the compiled model's client repeats it.
        (folder / "standardizer.json").write_text(json.dumps(est.standardizer_.to_dict()))
        (folder / "train.json").write_text(
            json.dumps(
                {
                    "task": args.task,
                    **data_info,
                    "n_accum_bits": int(est.module_.n_accum_bits),
                    "fit_seconds": fit_s,
                    "test_score": score,
                    "max_active_neurons": est.module_.max_active_neurons(),
                    "hidden_widths": est.module_.hidden_widths(),
                },
                indent=2,
            )
        )

    write_folder_atomically(out, write, overwrite=args.overwrite, kind=TRAINING_RUN, inputs=inputs)
    metric = "accuracy" if args.task == "classifier" else "R^2"
    _say(f"trained in {fit_s:.1f} s; test {metric} (clear, quantized): {score:.4f}")
    _say(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if not path.is_file():
        raise CliError(f"estimator file {str(path)!r} does not exist")
    out = _check_typed_file_output(
        args.out,
        suffix=".onnx",
        what="an ONNX model",
        is_ours=_is_onnx_file,
        overwrite=args.overwrite,
        inputs=(path,),
    )
    try:
        # A pickle runs code when loaded: only load estimator.pkl files you wrote yourself.
        est = pickle.loads(path.read_bytes())
    except Exception as exc:
        raise CliError(
            f"{path} is not an estimator saved by 'fheqnn train' (cannot unpickle: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(est, "export_onnx"):
        raise CliError(
            f"{path} holds a {type(est).__name__}, not an estimator saved by 'fheqnn train'"
        )
    model = est.export_onnx()
    _write_bytes(out, model.SerializeToString())
    _say(
        f"exported {args.out}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------- compile / report


#: Labels of a training folder's calibration rows (written by 'train', read by 'compile --from').
CALIBRATION_LABELS = "calibration_labels.npy"


def _rounding(value: str) -> Any:
    if value in ("auto", "off"):
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("rounding is 'auto', 'off' or a number of bits") from exc


def _p_error(value: str) -> Any:
    """argparse type of --p-error: 'auto', 'default' (Concrete's, 2**-40) or a probability."""
    if value in ("auto", "default"):
        return "auto" if value == "auto" else None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'default' or a probability such as 1e-3, got {value!r}"
        ) from exc


_P_ERROR_HELP = (
    "error probability per lookup: 'auto' (default: the largest of 1e-2, 1e-3, 1e-4 whose "
    "simulated calibration rows keep the accuracy guard, else Concrete's), 'default' "
    "(Concrete's 2**-40) or a number"
)


def _add_compile_choices(
    p: argparse.ArgumentParser, *, exact: bool = True, strict: bool = True
) -> None:
    """The compile choices, defined once for every command that compiles (read back by
    :func:`_compile_options`); ``exact`` and ``strict`` only where the command uses them."""
    p.add_argument(
        "--rounding",
        type=_rounding,
        default="auto",
        help="'auto' (default), 'off', or the lookup input precision in bits",
    )
    p.add_argument(
        "--approximate",
        action="store_true",
        help="approximate rounding only: one PBS per neuron, rare off-by-one errors "
        "(default: the cheaper of approximate and exact that keeps accuracy)",
    )
    if exact:
        p.add_argument(
            "--exact",
            action="store_true",
            help="exact rounding only (bit-exact with the interpreter)",
        )
    if strict:
        p.add_argument(
            "--strict",
            action="store_true",
            help="fail when compile-time choices lose accuracy, instead of warning",
        )
    p.add_argument("--p-error", type=_p_error, default="auto", help=_P_ERROR_HELP)


def _compile_options(args: argparse.Namespace, **values: Any) -> Any:
    """The validated compile options of the command line (one check, shared with the API)."""
    from .compiler.options import CompileOptions

    exact = getattr(args, "exact", False)
    approximate = getattr(args, "approximate", False)
    if exact and approximate:
        raise CliError("give --exact or --approximate, not both")
    return CompileOptions(
        rounding=args.rounding,
        rounding_exact=True if exact else (False if approximate else None),
        p_error=args.p_error,
        strict=getattr(args, "strict", False),
        **values,
    )


def _compile_speaking(compile_call: Any) -> Any:
    """Run a compilation; print what the accuracy guard warns about (``--strict``: error)."""
    import warnings

    from .errors import CompileAccuracyWarning

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
    from .tabular import MAX_TRAINING_BYTES, read_table

    table = read_table(path, target=None, max_bytes=MAX_TRAINING_BYTES, what="calibration")
    return _by_name(table, names, path)


def _by_name(table: Any, expected: Sequence[str] | None, path: str | Path) -> np.ndarray:
    """The rows of a file read by :func:`~fheqnn.tabular.read_table`, their columns in the
    ``expected`` order when both the file's header and the model know names (said when they
    are reordered)."""
    from .contract import align_columns

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


def _batch_size(value: str) -> int:
    """argparse type of ``--batch-size``: rows per circuit call, in [1, MAX_BATCH_SIZE]."""
    from .compiler.options import MAX_BATCH_SIZE

    number = _positive_int(value)
    if number > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BATCH_SIZE} rows, got {number}")
    return number


def _positive_int(value: str) -> int:
    """argparse type of a row count: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number of rows >= 1, got {number}")
    return number


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
    from .compiler.api import compile_onnx
    from .contract import OutputSpec, Standardizer
    from .errors import InvalidParameterError
    from .runtime.artifacts import COMPILED_MODEL, check_destination, read_json_file

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
        from .tabular import read_labels

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
    from .compiler.report import BitWidthReport, LayerWidths
    from .runtime.artifacts import CLIENT_SPECS_FILE, PROGRAM_FILE, REPORT_FILE, open_model_folder

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
    from .concrete_seam import key_sizes, load_client_specs

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


# ----------------------------------------------------------------------------- keys and data


def cmd_keygen(args: argparse.Namespace) -> int:
    from .runtime import FheModelClient

    client = FheModelClient(args.model)
    with _Step(f"generating keys for {args.model} into {args.keys}"):
        info = client.keygen(args.keys, overwrite=args.overwrite)
    _say(
        f"key id {info.key_id}; evaluation keys {info.evaluation_keys_bytes / 1e6:.1f} MB "
        f"({Path(args.keys) / 'evaluation.keys'}); the secret key stays in {args.keys}/"
    )
    return EXIT_OK


def cmd_encrypt(args: argparse.Namespace) -> int:
    from .runtime import FheModelClient

    out = _check_output_file(
        args.out, inputs=(args.input,), envelope=True, overwrite=args.overwrite
    )
    client = FheModelClient(args.model, args.keys)
    x, _ = _inference_rows(args.input, client.part, target=args.target, first_rows=args.rows)
    with _Step(f"encrypting {_rows(len(x))}"):
        blob = client.encrypt(x)
    _write_bytes(out, blob)
    _say(f"wrote {args.out} ({len(blob)} bytes)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import FheModelServer

    if args.ray:
        return _run_on_ray(args)
    target = _check_output_file(
        args.out,
        inputs=(args.input, args.evaluation_keys),
        envelope=True,
        overwrite=args.overwrite,
    )
    server = FheModelServer(args.model)
    keys = _read_envelope(args.evaluation_keys, "evaluation keys", server.limits["evaluation_keys"])
    inputs = _read_envelope(args.input, "encrypted input", server.limits["inputs"])
    with _Step("running on ciphertexts"):
        out = server.run(inputs, keys)
    _write_bytes(target, out)
    _say(f"wrote {args.out} ({len(out)} bytes)")
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    from .runtime import FheModelClient
    from .runtime.artifacts import envelope_limits

    def check_out() -> Path | None:
        return _check_predictions_output(args, inputs=(args.input,))

    out = check_out()
    client = FheModelClient(args.model, args.keys)
    if args.proba:
        client.check_proba()  # before reading anything
    blob = _read_envelope(args.input, "encrypted result", envelope_limits(client.folder)["outputs"])
    from .runtime.envelope import EnvelopeError

    try:
        pred = client.decrypt_proba(blob) if args.proba else client.decrypt(blob)
    except EnvelopeError as exc:
        raise CliError(f"--input {args.input}: {exc}") from exc
    _give_predictions(
        out,
        np.asarray(pred),
        check_out,
        classes=client.part.output_spec.classes,
        proba=args.proba,
    )
    return EXIT_OK


def _encrypted_predict(client: Any, server: Any, x: np.ndarray, quiet: bool) -> Any:
    """The runtime's encrypted round trip, with a progress bar."""
    from tqdm.auto import tqdm

    from .runtime import encrypted_predict

    with tqdm(total=len(x), desc="encrypted rows", unit="row", disable=quiet, leave=False) as bar:
        return encrypted_predict(client, server, x, progress=bar.update)


def cmd_predict(args: argparse.Namespace) -> int:
    from .runtime import FheModelClient, FheModelServer

    def check_out() -> Path | None:
        return _check_predictions_output(args, inputs=(args.input, args.labels))

    out = check_out()
    if args.id is not None and (out is None or out.suffix.lower() != ".csv"):
        raise CliError(
            f"--id {args.id} copies that column into the table of predictions: give --out "
            "FILE.csv too"
        )
    client = FheModelClient(args.model, args.keys)
    x, y, ids = _prediction_data(args, client.part)
    if y is not None and len(y) != len(x):
        raise CliError(
            f"{args.labels} has {len(y)} labels but {args.input} has {len(x)} rows; expected "
            "one label per row"
        )
    if args.rows:
        x = x[: args.rows]
        y = None if y is None else y[: args.rows]
        ids = None if ids is None else (ids[0][: args.rows], ids[1])
    if args.server:
        trip = _remote_round_trip(args, client, x)
    else:
        trip = _encrypted_predict(client, FheModelServer(args.model), x, args.quiet)
    pred = np.asarray(trip.predictions)
    _give_predictions(
        out,
        pred,
        check_out,
        ids=ids,
    )
    _say(
        f"{_rows(len(x))}, server time {trip.server_seconds:.2f} s "
        f"({trip.seconds_per_row:.3f} s per row)"
    )
    if y is not None:
        _say_score(pred, y, client.part.output_spec.kind)
    return EXIT_OK


def _say_score(pred: np.ndarray, y: np.ndarray, kind: str) -> None:
    """How decrypted predictions compare with true labels: R^2 and mean absolute error for a
    regressor (exact equality of real values says nothing), else accuracy. A model without
    post-processing (``raw``) is read as the compiler's guard reads it: one output is a value,
    several are class scores (their argmax is the class index)."""
    if kind == "raw" and pred.ndim == 2:
        if pred.shape[1] == 1:
            pred, kind = pred[:, 0], "regressor"
        else:
            pred = pred.argmax(axis=1)
    if kind == "regressor":
        from sklearn.metrics import mean_absolute_error, r2_score

        try:
            truth = np.asarray(y, dtype=np.float64).reshape(pred.shape)
        except ValueError as exc:
            raise CliError(
                f"the true values (shape {np.shape(y)}) are not numbers of the predictions' "
                f"shape {pred.shape}"
            ) from exc
        r2 = f"R^2 {r2_score(truth, pred):.4f}, " if len(pred) >= 2 else ""
        _say(f"{r2}mean absolute error {mean_absolute_error(truth, pred):.4g} (encrypted)")
        return
    if (pred.dtype.kind == "U") != (y.dtype.kind == "U"):
        # Class labels read back as text on one side only: compare them as text.
        pred, y = pred.astype(str), y.astype(str)
    _say(f"accuracy (encrypted): {np.mean(pred == y):.4f}")


def _prediction_data(
    args: argparse.Namespace, part: Any
) -> tuple[np.ndarray, np.ndarray | None, tuple[Sequence[str], str] | None]:
    """``predict``'s rows, true labels (from --labels, or the --target column of --input) and
    row ids (the --id column and its name)."""
    from .tabular import MAX_INFERENCE_ROWS, inference_byte_limit, read_labels

    if args.labels and args.target is not None:
        raise CliError(
            "give either --labels FILE or --target COLUMN (the labels are that column of "
            "--input), not both"
        )
    table = _inference_table(args.input, part, target=args.target, row_ids=args.id)
    x, y = _by_name(table, part.feature_names, args.input), table.y
    if args.labels:
        y = read_labels(args.labels, max_bytes=inference_byte_limit(1), max_rows=MAX_INFERENCE_ROWS)
    ids = None if table.row_ids is None else (table.row_ids, table.row_ids_name or "id")
    return x, y, ids


def _inference_table(
    path: str | Path,
    part: Any,
    *,
    target: str | None,
    first_rows: int | None = None,
    row_ids: str | None = None,
) -> Any:
    """An inference input file read for a model (its feature count and names)."""
    from .tabular import MAX_INFERENCE_ROWS, inference_byte_limit, read_table

    return read_table(
        path,
        target=target,
        n_features=part.n_features,
        max_bytes=inference_byte_limit(part.n_features),
        max_rows=MAX_INFERENCE_ROWS,
        first_rows=first_rows,
        what="input",
        model_names=part.feature_names,
        row_ids=row_ids,
    )


def _inference_rows(
    path: str | Path, part: Any, *, target: str | None, first_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows (and the ``target`` column, if named) of an inference input file, its columns in
    the model's order: found by name when both the file's header and the model know names."""
    table = _inference_table(path, part, target=target, first_rows=first_rows)
    return _by_name(table, part.feature_names, path), table.y


# ----------------------------------------------------------------------------- serving


def _token(var: str | None) -> str | None:
    """The token held by the environment variable ``var`` (never given on the command line)."""
    if var is None:
        return None
    import os

    token = os.environ.get(var)
    if not token:
        raise CliError(f"--token-env {var}: the environment variable {var} is not set or empty")
    return token


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.config import ServeConfig

    if args.replicas != 1 and not args.ray:
        raise CliError("--replicas needs --ray (one process serves without Ray)")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in [0, 65535], got {args.port}")
    config = ServeConfig(
        model_folders=tuple(Path(m) for m in args.models),
        key_store=Path(args.key_store) if args.key_store else None,
        max_request_mb=args.max_request_mb,
        token=_token(args.token_env),
        max_cached_keys=args.max_cached_keys,
        workers=args.workers,
        backend="ray" if args.ray else "local",
        replicas=args.replicas,
    )
    try:
        if args.ray:
            return _serve_on_ray(args, config)
        from .serving.app import create_app
        from .serving.runner import serve_foreground

        app = create_app(config)
        serve_foreground(
            app,
            host=args.host,
            port=args.port,
            on_ready=lambda url: _say(
                f"serving {len(app.state.service.models)} model(s) at {url} "
                f"(API docs: {url}/docs); Ctrl-C stops"
            ),
        )
    except KeyboardInterrupt:
        print("fheqnn: stopped", file=sys.stderr, flush=True)
        code = 130
    else:
        code = EXIT_OK
    sys.stdout.flush()
    sys.stderr.flush()
    # The service has shut down cleanly. Once a circuit has run, concrete-python's runtime may
    # replace the process exit status at interpreter teardown (0, or a SIGKILL status), however
    # the server stopped: leave now so that the status is ours (130 after Ctrl-C).
    import os

    os._exit(code)


def _serve_on_ray(args: argparse.Namespace, config: Any) -> int:
    from .serving import ray_backend

    port = args.port or _free_port(args.host)
    try:
        nodes = ray_backend.init_ray(args.ray, num_cpus=args.ray_cpus)
        where = "local instance" if args.ray == "local" else f"cluster {args.ray}"
        _say(f"Ray {where}: nodes {', '.join(nodes)}")
        url, _ = ray_backend.deploy_service(
            config, host=args.host, port=port, replica_cpus=args.replica_cpus
        )
        _say(
            f"serving {len(config.model_folders)} model(s) at {url} on {config.replicas} Ray "
            f"Serve replica(s) (API docs: {url}/docs); Ctrl-C stops"
        )
        while True:
            time.sleep(3600)
    finally:
        ray_backend.shutdown(serve_too=True)


def request_rows(batch_size: int, requested: int | None) -> int:
    """Rows per request of ``predict --server`` for a model of ``batch_size`` rows per call.

    Default: whole circuit calls (a part-filled call is padded: paid for, then dropped), at
    least :data:`DEFAULT_REQUEST_ROWS` rows. A requested count that is not a multiple of the
    batch size is kept, with a note on what the padding costs.
    """
    if requested is None:
        return batch_size * -(-DEFAULT_REQUEST_ROWS // batch_size)
    if requested < 1:
        raise CliError(f"--batch-rows must be >= 1, got {requested}")
    if requested % batch_size:
        padded = batch_size * -(-requested // batch_size)
        _say(
            f"note: this model runs {batch_size} rows per circuit call; --batch-rows "
            f"{requested} pads every request to {padded} rows (a multiple of {batch_size} "
            "wastes nothing)"
        )
    return requested


def _remote_round_trip(args: argparse.Namespace, client: Any, x: np.ndarray) -> Any:
    """``predict --server``: the same round trip as the local one, through the HTTP service."""
    from tqdm.auto import tqdm

    from .runtime import RoundTrip
    from .serving.client import HttpClient

    rows_per_request = request_rows(client.batch_size, args.batch_rows)
    x = client.part.check_and_warn(x)  # once for the whole file, not per request
    outputs, run_s = [], 0.0
    with (
        HttpClient(args.server, token=_token(args.token_env)) as http,
        tqdm(
            total=len(x), desc="encrypted rows", unit="row", disable=args.quiet, leave=False
        ) as bar,
    ):
        for start in range(0, len(x), rows_per_request):
            part = x[start : start + rows_per_request]
            outputs.append(http.predict_raw(client, part, check_range=False))
            run_s += http.last_run_seconds
            bar.update(len(part))
    raw = np.concatenate(outputs)
    return RoundTrip(raw, client.part.postprocess(raw), run_s, len(x))


def _run_on_ray(args: argparse.Namespace) -> int:
    from .runtime.artifacts import envelope_limits, open_model_folder
    from .serving import ray_backend

    target = _check_output_file(
        args.out,
        inputs=(args.input, args.evaluation_keys),
        envelope=True,
        overwrite=args.overwrite,
    )
    limits = envelope_limits(open_model_folder(args.model))
    keys = _read_envelope(args.evaluation_keys, "evaluation keys", limits["evaluation_keys"])
    inputs = _read_envelope(args.input, "encrypted input", limits["inputs"])
    try:
        nodes = ray_backend.init_ray(args.ray, num_cpus=args.ray_cpus)
        _say(f"Ray: nodes {', '.join(nodes)}")
        with _Step("running on ciphertexts over Ray workers"):
            out = ray_backend.run_batch(args.model, inputs, keys, tasks=args.ray_tasks)
    finally:
        ray_backend.shutdown(serve_too=False)
    _write_bytes(target, out)
    _say(f"wrote {args.out} ({len(out)} bytes)")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from .serving.client import fetch_client_part

    folder = fetch_client_part(
        args.url, args.model_id, args.out, token=_token(args.token_env), overwrite=args.overwrite
    )
    names = ", ".join(sorted(p.name for p in folder.path.iterdir()))
    _say(f"saved the client part of model {folder.model_id} to {folder.path}/ ({names})")
    _say(f"next: fheqnn keygen {folder.path} --keys keys/NAME")
    return EXIT_OK


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .contract import range_warnings_off

    # A shipped data set's own split: its rare far values (a digits pixel) are the data's.
    with range_warnings_off():
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    from .compiler.api import compile_onnx
    from .datasets import load_split
    from .runtime import FheModelClient, FheModelServer

    x_tr, x_te, y_tr, y_te = load_split(args.dataset)
    _say(
        f"data set {args.dataset}: {len(x_tr)} training rows, {len(x_te)} test rows, "
        f"{x_tr.shape[1]} features, {len(np.unique(y_tr))} classes"
    )
    est = _estimator(args, "classifier")
    with _Step("training (quantization-aware, with pruning)"):
        est.fit(x_tr, y_tr)
    module = est.module_
    _say(
        f"  at most {module.max_active_neurons()} active weights per neuron "
        f"(accumulators <= {args.n_accum_bits} bits), hidden widths {module.hidden_widths()}"
    )
    options = _compile_options(args, n_accum_bits=args.n_accum_bits)
    with _Step("exporting to ONNX and compiling with the bit-width check"):
        model = _compile_speaking(
            lambda: compile_onnx(
                est.export_onnx(),
                x_tr,
                options=options,
                output_spec=est.output_spec_,
                standardizer=est.standardizer_,
                calibration_labels=y_tr,
            )
        )
    _say(model.report.to_text())
    circuit_dir = Path(args.circuits) / f"demo_{args.dataset}"
    key_dir = Path(args.keys) / f"demo_{args.dataset}"
    _say(
        f"saving the compiled model to {circuit_dir}/ and keys to {key_dir}/ "
        "(the demo replaces its own previous folders)"
    )
    model.save(circuit_dir, overwrite=True)
    client = FheModelClient(circuit_dir)
    with _Step("generating keys"):
        info = client.keygen(key_dir, overwrite=True)
    server = FheModelServer(circuit_dir)

    acc_clear = float(np.mean(est.predict(x_te) == y_te))
    acc_int = float(np.mean(model.predict(x_te, fhe="disable") == y_te))
    with _Step("simulating the circuit on every test row"):
        acc_sim = float(np.mean(model.predict(x_te, fhe="simulate") == y_te))
    rows = min(args.rows, len(x_te))
    trip = _encrypted_predict(client, server, x_te[:rows], args.quiet)
    pred_enc = trip.predictions
    acc_enc = float(np.mean(pred_enc == y_te[:rows]))
    sim_rows = model.predict(x_te[:rows], fhe="simulate")
    single = client.encrypt(x_te[:1])
    t0 = time.perf_counter()
    server.run(single)
    single_s = time.perf_counter() - t0
    summary = model.summary()
    _say("")
    _say(
        f"accuracy: clear (torch) {acc_clear:.4f} | integer program {acc_int:.4f} | "
        f"simulated {acc_sim:.4f} | encrypted {acc_enc:.4f} on {rows} rows "
        f"(agrees with simulation on {np.mean(pred_enc == sim_rows) * 100:.0f} % of them)"
    )
    _say(
        f"latency: {single_s:.3f} s for one row alone; {trip.seconds_per_row:.3f} s per row in "
        f"batches of {server.workers}"
    )
    _say(
        f"PBS per row: {model.pbs_count} for {model.program.hidden_neurons()} hidden neurons "
        f"({summary['removed_neurons']} dead neurons removed at compile time)"
    )
    bits = ", ".join(
        f"{r['layer']}: acc {r['proven_bits']}b proven / {r['measured_bits']}b measured"
        + (f", lookup {r['lookup_bits']}b" if r["lookup_bits"] else ", no lookup (client side)")
        for r in summary["layers"]
    )
    _say(f"bit-widths: {bits}")
    _say(
        f"keys: generated in {info.keygen_seconds:.1f} s, evaluation keys "
        f"{info.evaluation_keys_bytes / 1e6:.1f} MB; ciphertext {len(single)} B per input row"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .compiler.options import MAX_BATCH_SIZE

    out = _check_typed_file_output(
        args.out, suffix=".jsonl", what="JSON lines", is_ours=_is_jsonl_file, overwrite=None
    )
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
            from .fileio import atomic_write_bytes

            folder = Path(args.report_dir)
            folder.mkdir(parents=True, exist_ok=True)
            table = bench.comparison_table(pairs)
            atomic_write_bytes(folder / "comparison.md", (table + "\n").encode())
            with (folder / "comparison.jsonl").open("a") as handle:
                for ours, ref in pairs:
                    handle.write(json.dumps({"fheqnn": ours, "reference": ref}) + "\n")
            bench.plot_comparison(pairs, folder / "comparison.png")
            _say(table)
    if not out.is_file():
        raise CliError(f"no benchmark rows in {out}")
    md, png = bench.write_report(bench.read_rows(out), Path(args.report_dir), stem=out.stem)
    _say(md.read_text())
    _say(f"wrote {md} and {png}")
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fheqnn`` command."""
    from .compiler.options import MAX_BATCH_SIZE

    parser = argparse.ArgumentParser(
        prog="fheqnn",
        description="Sparse quantized neural networks, from training to encrypted inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, func: Any, *, native: bool = False) -> argparse.ArgumentParser:
        """A subcommand. ``native``: it calls Concrete's native code, whose SIGINT handler kills
        the process outright (and holds the GIL), so as a program it runs in a child process
        that Ctrl-C can stop cleanly (see :func:`_in_child`)."""
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func, native=native)
        return p

    p = add("train", "train a sparse quantized network and save it with its ONNX export", cmd_train)
    p.add_argument("--dataset", choices=DATASETS, help="a data set shipped with scikit-learn")
    p.add_argument("--data", help=".csv or .npy features (last column = target without --labels)")
    p.add_argument("--labels", help=".csv or .npy targets (then every --data column is a feature)")
    p.add_argument(
        "--target",
        help="the target column of --data: a header name, or an index from 0 (-1: the last; "
        "default: the last column)",
    )
    p.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the CSV's first row holds column names (default: detected)",
    )
    p.add_argument("--task", choices=("classifier", "regressor"), default="classifier")
    p.add_argument("--out", required=True, help="folder to create (estimator, ONNX, splits)")
    p.add_argument("--overwrite", action="store_true")
    _add_network_options(p)

    p = add("export", "export a trained estimator (estimator.pkl) to QCDQ ONNX", cmd_export)
    p.add_argument("--model", required=True, help="estimator.pkl written by 'train'")
    p.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")

    p = add(
        "compile",
        "compile an ONNX model to a circuit, with the accumulator check",
        cmd_compile,
        native=True,
    )
    p.add_argument("--from", dest="from_dir", help="a 'train' folder (model.onnx, calibration.npy)")
    p.add_argument("--onnx", help="ONNX file")
    p.add_argument("--calibration", help=".npy / .csv calibration rows")
    p.add_argument("--output-spec", help="output_spec.json (class labels, target scaling)")
    p.add_argument(
        "--standardizer",
        help="standardizer.json (per-feature mean and scale applied on the client before "
        "quantization; default with --from: the training folder's)",
    )
    p.add_argument("--n-accum-bits", type=int, default=None, help="accumulator budget (bits)")
    _add_compile_choices(p)
    p.add_argument(
        "--calibration-labels",
        help="labels of the calibration rows (.npy / .csv): the rounding then keeps their "
        "accuracy (default with --from: the training folder's)",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1,
        metavar="N",
        help=f"rows per circuit call (default 1; at most {MAX_BATCH_SIZE}): the circuit takes "
        "N rows at once and clients encrypt rows in chunks of N, the last one padded. Each call "
        "pays a fixed cost (~0.1 s with large keys), so N > 1 raises throughput for many rows; "
        "a single row still takes one call",
    )
    p.add_argument("--out", required=True, help="folder to create (e.g. circuits/NAME)")
    p.add_argument("--overwrite", action="store_true")

    p = add("report", "print a compiled model's bit-width table and circuit statistics", cmd_report)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--json", action="store_true", help="print report.json")

    p = add("keygen", "generate keys for a compiled model (client side)", cmd_keygen, native=True)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder to create (e.g. keys/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key folder")

    p = add("encrypt", "quantize and encrypt rows (client side)", cmd_encrypt, native=True)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help=".npy / .csv rows")
    p.add_argument("--target", help="a column of the --input CSV to drop (name or index)")
    p.add_argument("--rows", type=_positive_int, default=None, help="only the first N rows")
    p.add_argument("--out", required=True, help="ciphertext file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ciphertext file")

    p = add("run", "run the circuit on encrypted rows (server side)", cmd_run, native=True)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--evaluation-keys", required=True, help="the client's evaluation.keys")
    p.add_argument("--input", required=True, help="ciphertext file from 'encrypt'")
    p.add_argument("--out", required=True, help="result file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ciphertext file")
    p.add_argument(
        "--ray", metavar="ADDRESS", help="spread the rows over Ray: 'local' or a cluster address"
    )
    p.add_argument("--ray-tasks", type=int, default=None, help="Ray tasks (default: its CPUs)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance")

    p = add("decrypt", "decrypt and post-process results (client side)", cmd_decrypt, native=True)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help="result file from 'run'")
    p.add_argument("--proba", action="store_true", help="class probabilities")
    _add_predictions_output(p)

    p = add("predict", "encrypt -> run -> decrypt locally", cmd_predict, native=True)
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help=".npy / .csv rows")
    p.add_argument("--labels", help="true labels (one per --input row), to print the accuracy")
    p.add_argument(
        "--target",
        help="a column of the --input CSV holding the true labels (name or index): dropped from "
        "the features, used for the accuracy",
    )
    p.add_argument("--rows", type=_positive_int, default=None, help="only the first N rows")
    _add_predictions_output(p)
    p.add_argument(
        "--id",
        metavar="COLUMN",
        help="a column of the --input CSV that identifies the rows (name or index): not a "
        "feature; copied as the first column of the --out table",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--server", metavar="URL", help="run on an 'fheqnn serve' service over HTTP")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    p.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help=f"rows per request with --server (default: the smallest multiple of the model's "
        f"rows per circuit call that is at least {DEFAULT_REQUEST_ROWS})",
    )

    # Native: every encrypted run re-installs Concrete's SIGINT handler over uvicorn's, so a
    # Ctrl-C after the first request would SIGKILL a server in the foreground process.
    p = add(
        "serve", "serve compiled models over HTTP (encrypted inference)", cmd_serve, native=True
    )
    p.add_argument("models", nargs="+", help="compiled model folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--key-store", help="folder keeping uploaded evaluation keys across restarts")
    p.add_argument(
        "--max-request-mb", type=float, default=256.0, help="largest request body (MB, default 256)"
    )
    p.add_argument("--token-env", metavar="VAR", help="require the token held by this variable")
    p.add_argument(
        "--max-cached-keys", type=int, default=8, help="key sets kept deserialized (default 8)"
    )
    p.add_argument("--workers", type=int, default=None, help="encrypted runs at once (threads)")
    p.add_argument(
        "--ray", metavar="ADDRESS", help="deploy on Ray Serve: 'local' or a cluster address"
    )
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance")

    p = add("fetch", "save a served model's client part (for keygen)", cmd_fetch)
    p.add_argument("url", help="the service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("model_id", help="the model id (GET /models lists them)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")

    p = add(
        "demo",
        "the whole flow on a shipped data set, encrypted inference included",
        cmd_demo,
        native=True,
    )
    p.add_argument("--dataset", choices=DATASETS, default="breast_cancer")
    p.add_argument(
        "--rows", type=_positive_int, default=10, help="test rows to run encrypted (default 10)"
    )
    _add_compile_choices(p)
    p.add_argument("--circuits", default="circuits", help="where compiled models go")
    p.add_argument("--keys", default="keys", help="where key folders go")
    _add_network_options(p)

    p = add("bench", "accuracy and encrypted latency across pruning percentages", cmd_bench)
    p.add_argument(
        "--profile",
        choices=("quick", "full"),
        default="quick",
        help="quick: simulation only, small (CI); full: real encryption (by hand)",
    )
    p.add_argument("--datasets", nargs="+", choices=DATASETS, help="override the profile's")
    p.add_argument("--prune", nargs="+", type=float, help="pruning fractions, override")
    p.add_argument("--epochs", type=int, default=None, help="training epochs, override")
    p.add_argument("--rows", type=int, default=None, help="encrypted test rows (0: none)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per latency (median)")
    p.add_argument(
        "--throughput-rows",
        type=int,
        default=None,
        metavar="N",
        help="test rows over which encrypted throughput (rows/s) is measured for circuits of "
        "each --throughput-batches size (0: none; quick profile 0, full 32); each size costs a "
        "compilation and a key generation",
    )
    p.add_argument(
        "--throughput-batches",
        nargs="+",
        type=int,
        metavar="B",
        help="rows per circuit call to compare (default 1 8 32; 1 is one call per row)",
    )
    p.add_argument("--seed", type=int, default=0)
    _add_compile_choices(p, exact=False, strict=False)
    p.add_argument("--out", default="benchmarks/results/bench.jsonl", help="JSON lines to append")
    p.add_argument("--report-dir", default="benchmarks/results", help="where the table/plot go")
    p.add_argument("--report-only", action="store_true", help="only rebuild table and plot")
    p.add_argument(
        "--compare-reference",
        action="store_true",
        help="also run Concrete ML 1.9's network (benchmarks/reference.py) on each data set and "
        "write comparison.md / .png with the ratios (needs real encryption: --rows >= 1)",
    )
    p.add_argument(
        "--reference-python",
        default=None,
        help="the reference environment's python (default /work/refenv/bin/python)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fheqnn`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .interrupts import forget_interrupts, record_and_raise

    # From here on, Ctrl-C is a KeyboardInterrupt that unwinds (and cleans up) every step, and
    # is recorded in case something swallows it (see record_and_raise); both only for this
    # command (main() is also called in-process, by tests and scripts).
    previous = signal.getsignal(signal.SIGINT)
    forget_interrupts()
    signal.signal(signal.SIGINT, record_and_raise)
    try:
        return _run_command(args)
    finally:
        forget_interrupts()
        if callable(previous) or previous in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """fheqnn's warnings about the user's data (rows far outside the training range) as one
    ``warning: ...`` line on stderr, without Python's file and line; others as Python shows
    them."""
    import warnings

    from .errors import InputRangeWarning

    shown = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        if issubclass(category, InputRangeWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, *rest)

    with warnings.catch_warnings():
        warnings.simplefilter("always", InputRangeWarning)
        warnings.showwarning = show
        yield


def _run_command(args: argparse.Namespace) -> int:
    """The command's function, its exceptions turned into exit codes."""
    from .errors import FheqnnError

    try:
        with _plain_warnings():
            if AS_PROGRAM and args.native:
                return _in_child(args)
            return int(args.func(args))
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:
        from .interrupts import interrupted_before

        if interrupted_before():
            # An error after a Ctrl-C is its consequence (e.g. a module whose import the
            # interrupt cut short, measured in training): report the interrupt.
            return _interrupted()
        if args.verbose and not isinstance(exc, CliError | OSError | FheqnnError):
            raise
        return _exit_code(exc)


def _in_child(args: argparse.Namespace) -> int:
    """Run the command in a forked child; at Ctrl-C, kill it and remove its temporaries.

    The parent has not run any Concrete code yet, so the fork is safe (see
    :func:`fheqnn.interrupts.run_in_child`).
    """
    from .fileio import clean_stale
    from .interrupts import run_in_child

    outputs = [getattr(args, name, None) for name in ("out", "keys", "circuits")]
    if args.command == "demo":
        outputs = [
            Path(args.circuits) / f"demo_{args.dataset}",
            Path(args.keys) / f"demo_{args.dataset}",
        ]

    def cleanup() -> None:
        for path in outputs:
            if path:
                clean_stale(Path(path))

    return run_in_child(lambda: int(args.func(args)), exit_code=_exit_code, cleanup=cleanup)


def _exit_code(exc: BaseException) -> int:
    """Print what went wrong (one line on stderr) and return the exit code for it."""
    from .errors import AccumulatorOverflowError, FheqnnError

    if isinstance(exc, KeyboardInterrupt):
        return _interrupted()
    if isinstance(exc, BrokenPipeError):
        return _broken_pipe()
    if isinstance(exc, AccumulatorOverflowError):
        print(f"fheqnn: accumulator budget exceeded: {exc}", file=sys.stderr)
        return EXIT_ACCUMULATOR
    if isinstance(exc, FheqnnError | CliError):
        print(f"fheqnn: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if isinstance(exc, OSError):
        # A path the user gave that cannot be read or written (permissions, a folder where a
        # file was expected, a full disk): the cause, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fheqnn: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_INPUT
    print(
        f"fheqnn: unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _interrupted() -> int:
    """Ctrl-C: every ``finally`` has run (temporaries removed); say so in one line."""
    from .interrupts import native_work_running

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
    with contextlib.suppress(OSError, ValueError):
        if _Step.open:
            print(" interrupted", flush=True)  # ends the step's "..." line
        sys.stdout.flush()
    print("fheqnn: interrupted", file=sys.stderr, flush=True)
    if native_work_running():
        # Concrete still runs in a worker thread that cannot be stopped; tearing the
        # interpreter down around it can crash, so leave at once (nothing is half-written).
        os._exit(EXIT_INTERRUPTED)
    from .interrupts import record_and_raise

    signal.signal(signal.SIGINT, record_and_raise)
    return EXIT_INTERRUPTED


def _broken_pipe() -> int:
    """The reader of our output went away (``| head -1``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
