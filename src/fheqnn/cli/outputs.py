"""Output files of the commands: refusing to overwrite what is not ours, and the predictions
table (``--out``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, _rows, _save_array, _say, _write_bytes


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
        from ..runtime.envelope import MAGIC, MAGIC_V1

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
    from ..runtime.artifacts import COMPILED_MODEL, KEY_FOLDER, TRAINING_RUN, folder_kind

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
