"""Reading users' data files (.csv and .npy) into feature matrices and label vectors.

CSV files are read the way people write them: an optional header row (detected, or forced with
``header=``), a target column chosen by header name or index, string or numeric labels kept as they
were in the file (``"red"`` stays ``"red"``, ``3`` stays the integer 3), CRLF or LF line ends,
quoted fields, UTF-8 with or without a byte-order mark. Every problem is an
:class:`~fheqnn.errors.InvalidInputError` naming the file, the line (1-based, as in an editor)
and the column (its header name when there is one).

Sizes are checked before data is read: a file larger than the allowed number of bytes, a .npy
header announcing too many rows, or a CSV line longer than a row can be is refused before it
reaches memory. Deployed clients read their input files through this module, so it imports only
numpy and the standard library.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import logging
import math
import os
import shlex
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

#: Largest training (or calibration) data file read, in bytes (2 GiB).
MAX_TRAINING_BYTES = 2 * 1024**3
#: Most rows an inference input file (``encrypt`` / ``predict``) may hold.
MAX_INFERENCE_ROWS = 100_000
#: Bytes one CSV value may take in an inference file, separator included: the 17 significant
#: digits of a float64 with sign, point and exponent (24 characters) and some room for spaces.
CSV_BYTES_PER_VALUE = 32
#: Bytes allowed on top of the values of an inference CSV file (header row, blank lines).
CSV_EXTRA_BYTES = 64 * 1024

#: Field values read as "missing" (compared lower-cased, after stripping spaces).
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "?"})

# Records looked at to decide whether the first row is a header.
_HEADER_LOOKAHEAD = 50


@dataclass(frozen=True)
class Table:
    """A data file read as numeric features and, optionally, a target column.

    Attributes:
        x: features, float64, shape ``(n_rows, n_features)``.
        y: target values, shape ``(n_rows,)``: int64 if every value is an integer, float64 if
            every value is a number, else strings; ``None`` when no target column was asked for.
        feature_names: the header's names of the feature columns, or ``None`` without a header.
        target_name: the header's name of the target column (``None`` without a header or target).
        source: the file it was read from.
        row_ids: the text of the ``row_ids`` column, one per row, as written (``None`` when no
            such column was asked for).
        row_ids_name: the header's name of that column (``None`` without a header).
    """

    x: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...] | None
    target_name: str | None
    source: str
    row_ids: tuple[str, ...] | None = None
    row_ids_name: str | None = None


def inference_byte_limit(n_features: int, max_rows: int = MAX_INFERENCE_ROWS) -> int:
    """Largest inference CSV file (bytes) that can hold ``max_rows`` rows of ``n_features``.

    One extra column per row is allowed, for a target column that is dropped on reading.
    """
    return CSV_EXTRA_BYTES + max_rows * (n_features + 1) * CSV_BYTES_PER_VALUE


def read_table(
    path: str | Path,
    *,
    target: int | str | None = -1,
    header: bool | None = None,
    n_features: int | None = None,
    max_bytes: int | None = MAX_TRAINING_BYTES,
    max_rows: int | None = None,
    first_rows: int | None = None,
    what: str = "data",
    model_names: Sequence[str] | None = None,
    row_ids: int | str | None = None,
) -> Table:
    """Read a .csv or .npy file as features and an optional target column.

    Args:
        path: the file; its suffix (``.csv`` or ``.npy``) chooses the format.
        target: the target column: a header name, or an index (0-based, negative counts from
            the end; a string of digits is an index unless it is a header name); ``None`` when
            every column is a feature.
        header: whether a CSV file's first row holds column names; ``None`` detects it (a first
            row of non-numeric names above data).
        n_features: the number of feature columns expected, checked before the data is read.
        max_bytes: refuse a file larger than this (bytes); ``None`` for no limit.
        max_rows: refuse a file with more data rows than this; ``None`` for no limit.
        first_rows: read only the first rows (at least 1); ``None`` reads all of them.
        what: what the file is, for messages (``"data"``, ``"input"``, ``"calibration"``).
        model_names: the feature names of the model the rows are for, if it knows them: a
            wrong feature count then names the columns it expects (those the header lacks).
        row_ids: a CSV column that identifies the rows (a name or an index, like ``target``):
            not a feature; its text is kept, as written, in :attr:`Table.row_ids`.

    Returns:
        The :class:`Table`.

    Raises:
        InvalidInputError: the file is missing, too large, not UTF-8, empty, ragged, has a
            missing or non-numeric feature value, an unknown target, too many rows, or a feature
            count other than ``n_features``; the message names the file, line and column.
    """
    path = Path(path)
    if first_rows is not None and first_rows < 1:
        raise InvalidInputError(f"first_rows must be at least 1, got {first_rows}")
    _check_file(path, what, max_bytes)
    if path.suffix.lower() == ".npy":
        if row_ids is not None:
            raise InvalidInputError(
                f"{what} file {path}: a .npy file holds numbers only, so it has no column of row "
                "identifiers to copy; give the rows as a CSV file"
            )
        return _read_npy_table(path, target, n_features, max_rows, first_rows, what, model_names)
    if path.suffix.lower() == ".csv":
        return _read_csv_table(
            path,
            target,
            header,
            n_features,
            max_bytes,
            max_rows,
            first_rows,
            what,
            model_names,
            row_ids=row_ids,
        )
    raise InvalidInputError(
        f"{what} file {path}: unsupported file type {path.suffix!r} (use .csv or .npy)"
    )


def read_matrix(
    path: str | Path,
    *,
    n_features: int | None = None,
    target: int | str | None = None,
    max_bytes: int | None = MAX_TRAINING_BYTES,
    max_rows: int | None = None,
    first_rows: int | None = None,
    what: str = "input",
) -> np.ndarray:
    """Read a numeric feature matrix (float64, ``(n_rows, n_features)``) from .csv or .npy.

    A header row in a CSV file is allowed. ``target`` names a column to drop (a CSV file that
    still holds the training target). Other arguments and errors as in :func:`read_table`.
    """
    return read_table(
        path,
        target=target,
        n_features=n_features,
        max_bytes=max_bytes,
        max_rows=max_rows,
        first_rows=first_rows,
        what=what,
    ).x


def read_labels(
    path: str | Path,
    *,
    max_bytes: int | None = MAX_TRAINING_BYTES,
    max_rows: int | None = None,
    what: str = "labels",
) -> np.ndarray:
    """Read a label vector, shape ``(n_rows,)``, from a one-column .csv or a .npy file.

    Labels are kept as they are in the file (see :class:`Table`); a .npy file may be 1-D or have
    one column, and hold numbers or strings.

    Raises:
        InvalidInputError: as :func:`read_table`, and for more than one column.
    """
    path = Path(path)
    _check_file(path, what, max_bytes)
    if path.suffix.lower() == ".npy":
        shape, dtype = _npy_header(path, what)
        if dtype.kind not in "biufU":
            raise InvalidInputError(
                f"{what} file {path} holds dtype {dtype}; expected numbers or strings"
            )
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInputError(
                f"{what} file {path} has shape {shape}; expected one label per row: shape "
                "(n_rows,) or (n_rows, 1)"
            )
        _check_row_count(path, shape[0], max_rows, what)
        y = np.load(path, allow_pickle=False).reshape(-1)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y))[0])
            raise InvalidInputError(f"{what} file {path}: row index {row} holds {y[row]}")
        if len(y) == 0:
            raise InvalidInputError(f"{what} file {path} holds no labels")
        return y
    if path.suffix.lower() != ".csv":
        raise InvalidInputError(
            f"{what} file {path}: unsupported file type {path.suffix!r} (use .csv or .npy)"
        )
    table = _read_csv_table(path, 0, None, None, max_bytes, max_rows, None, what, labels_only=True)
    assert table.y is not None  # target 0 is always read
    return table.y


def parse_labels(values: Sequence[str]) -> np.ndarray:
    """Labels from their text: int64 if all are integers, float64 if all are numbers, else str.

    ``"3"`` gives the integer 3 (not 3.0), ``"red"`` stays ``"red"``.
    """
    try:
        ints = [int(v) for v in values]
        return np.asarray(ints, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.asarray(list(values), dtype=str)


def check_training_rows(
    y: np.ndarray, task: str, *, test_fraction: float = 0.25, source: str = "data"
) -> None:
    """Check that labels allow a train/test split and training, before anything is trained.

    Args:
        y: the target values, shape ``(n_rows,)``.
        task: ``"classifier"`` (stratified split) or ``"regressor"``.
        test_fraction: the share of rows held out for the test score.
        source: the file, for messages.

    Raises:
        InvalidInputError: fewer than 2 classes, a class with a single row, too few rows for a
            test part that holds every class (classifier) or 2 rows (regressor), or a
            non-numeric target for a regressor.
    """
    n = len(y)
    n_test = math.ceil(n * test_fraction)
    if task == "regressor":
        if y.dtype.kind not in "biuf":
            first = next(v for v in y.tolist() if not _is_number(str(v)))
            raise InvalidInputError(
                f"{source}: the target column holds {first!r}; a regressor needs numbers "
                "(use --task classifier for class labels)"
            )
        if n_test < 2 or n - n_test < 2:
            raise InvalidInputError(
                f"{source} has {n} data rows; a regressor needs at least 5 (at least 2 for the "
                f"test part of a {1 - test_fraction:.0%}/{test_fraction:.0%} split)"
            )
        return
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        shown = "no rows" if n == 0 else f"the single class {classes[0].item()!r} in all {n} rows"
        if n == 1:
            shown = f"the single class {classes[0].item()!r} in its only row"
        raise InvalidInputError(
            f"{source}: the target column holds {shown}; a classifier needs at least 2 classes"
        )
    rare = [c.item() for c, k in zip(classes, counts, strict=True) if k < 2]
    if rare:
        hint = ""
        if len(classes) > 20 and np.issubdtype(np.asarray(y).dtype, np.number):
            # Many numeric "classes", most of them rare: a quantity to predict, not a label.
            hint = (
                f" (a numeric target with {len(classes)} values: for a regressor, give "
                "--task regressor)"
            )
        raise InvalidInputError(
            f"{source}: class {rare[0]!r} has a single row ({len(rare)} such classes); each "
            f"class needs at least 2 rows for a stratified train/test split{hint}"
        )
    if n_test < len(classes) or n - n_test < len(classes):
        raise InvalidInputError(
            f"{source} has {n} data rows for {len(classes)} classes; a "
            f"{1 - test_fraction:.0%}/{test_fraction:.0%} split needs at least "
            f"{math.ceil(len(classes) / test_fraction)} rows so that both parts hold every class"
        )


# ----------------------------------------------------------------------------- helpers


def _check_file(path: Path, what: str, max_bytes: int | None) -> None:
    if not path.is_file():
        raise InvalidInputError(f"{what} file {str(path)!r} does not exist")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidInputError(
            f"{what} file {path} is {size} bytes, more than the {max_bytes} bytes allowed; "
            "split it into smaller files"
        )


def _check_row_count(path: Path, n_rows: int, max_rows: int | None, what: str) -> None:
    if max_rows is not None and n_rows > max_rows:
        raise InvalidInputError(
            f"{what} file {path} has more than {max_rows} rows ({n_rows}); at most {max_rows} "
            "are read at once: split the file (or read the first rows only)"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_missing(text: str) -> bool:
    return text.lower() in MISSING_VALUES


def _column(j: int, names: Sequence[str] | None) -> str:
    """1-based column description, with its header name if any."""
    return f"column {j + 1} ({names[j]!r})" if names else f"column {j + 1}"


def _csv_records(
    path: Path, what: str, max_line_bytes: int | None
) -> Iterator[tuple[int, list[str]]]:
    """(first line number, stripped fields) of each non-blank CSV record."""

    def lines() -> Iterator[str]:
        with open(path, "rb") as handle:
            number = 0
            while True:
                raw = (
                    handle.readline()
                    if max_line_bytes is None
                    else handle.readline(max_line_bytes + 1)
                )
                if not raw:
                    return
                number += 1
                if max_line_bytes is not None and len(raw) > max_line_bytes:
                    raise InvalidInputError(
                        f"{what} file {path}, line {number}: longer than {max_line_bytes} bytes, "
                        "more than a row of this model's features can take"
                    )
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    # Line by line: b"\n" never occurs inside a UTF-8 sequence, so the line
                    # number of a bad byte is exact.
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        f"{what} file {path}, line {number}: byte 0x{raw[exc.start]:02x} at "
                        f"position {exc.start + 1} is not UTF-8 text; save the file as UTF-8"
                    ) from exc

    reader = csv.reader(lines(), strict=True, skipinitialspace=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInputError(
                f"{what} file {path}, line {reader.line_num}: not a readable CSV row: {exc}"
            ) from exc
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        yield start, [field.strip() for field in fields]


def _detect_header(first: list[str], rest: list[list[str]]) -> bool:
    """A header: non-numeric names above data that is numeric in some column, or names that
    do not occur again in their column (all-string columns, e.g. a labels file)."""
    if any(_is_missing(f) or _is_number(f) for f in first):
        return False
    if not rest:
        return True
    for j in range(len(first)):
        if any(_is_number(r[j]) for r in rest if j < len(r)):
            return True
    return all(name not in (r[j] for r in rest if j < len(r)) for j, name in enumerate(first))


def _resolve_target(
    target: int | str | None,
    names: list[str] | None,
    n_columns: int,
    path: Path,
    what: str,
    role: str = "target",
) -> int | None:
    if target is None:
        return None
    if isinstance(target, str) and names is not None and target in names:
        return names.index(target)
    index: int | None = None
    if isinstance(target, int):
        index = target
    elif target.strip().lstrip("-").isdigit():
        index = int(target)
    if index is None:
        if names is None:
            raise InvalidInputError(
                f"{what} file {path} has no header row, so the {role} column {target!r} cannot "
                f"be a name; give a column index (0 to {n_columns - 1}, or -1 for the last)"
            )
        close = difflib.get_close_matches(target, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidInputError(
            f"{what} file {path}: no column named {target!r}{hint}; the header has "
            f"{', '.join(repr(n) for n in names)}"
        )
    if not -n_columns <= index < n_columns:
        raise InvalidInputError(
            f"{what} file {path}: {role} column index {index} is out of range for "
            f"{n_columns} columns (0 to {n_columns - 1}, or -{n_columns} to -1)"
        )
    return index % n_columns


def _names(names: Sequence[str], most: int = 15) -> str:
    """``'a', 'b', ...`` for a message; more than ``most`` names are cut after 12."""
    if len(names) <= most:
        return ", ".join(repr(n) for n in names)
    return ", ".join(repr(n) for n in names[:12]) + f" and {len(names) - 12} more"


def _check_feature_count(
    path: Path,
    got: int,
    n_features: int | None,
    what: str,
    columns: int,
    has_target: bool,
    *,
    file_names: Sequence[str] | None = None,
    model_names: Sequence[str] | None = None,
) -> None:
    if n_features is None or got == n_features:
        return
    hint = ""
    if not has_target and columns == n_features + 1:
        how = "--target NAME" if file_names is not None else "--target INDEX (-1: the last)"
        hint = f" (if one column is the target, name it so that it is dropped: {how})"
    if model_names is not None and len(model_names) == n_features:
        missing = [n for n in model_names if file_names is not None and n not in file_names]
        extra = [n for n in (file_names or ()) if n not in model_names]
        if not has_target and not missing and len(extra) == 1:
            hint = (
                f"; the model has no column {extra[0]!r}: if it holds the labels, drop it with "
                f"--target {shlex.quote(extra[0])}"
            )
        elif missing or extra:
            parts = [f"the header lacks {_names(missing)}"] if missing else []
            parts += [f"the model has no column {_names(extra)}"] if extra else []
            hint += "; " + "; ".join(parts)
        else:
            hint += f"; the model's columns, in order: {_names(model_names)}"
    raise InvalidInputError(
        f"{what} file {path} has {got} features per row, expected {n_features}{hint}"
    )


def _read_csv_table(
    path: Path,
    target: int | str | None,
    header: bool | None,
    n_features: int | None,
    max_bytes: int | None,
    max_rows: int | None,
    first_rows: int | None,
    what: str,
    model_names: Sequence[str] | None = None,
    *,
    labels_only: bool = False,
    row_ids: int | str | None = None,
) -> Table:
    max_line = None
    if n_features is not None and max_bytes is not None:
        max_line = CSV_EXTRA_BYTES + (n_features + 1) * CSV_BYTES_PER_VALUE
    records = _csv_records(path, what, max_line)
    head: list[tuple[int, list[str]]] = []
    for record in records:
        head.append(record)
        if len(head) > _HEADER_LOOKAHEAD:
            break
    if not head:
        raise InvalidInputError(f"{what} file {path} is empty (no rows)")
    if header is None:
        # A lone word in a labels file is a label: a header above no data is no labels file.
        lone_label = labels_only and len(head) == 1
        header = not lone_label and _detect_header(head[0][1], [f for _, f in head[1:]])
    names = head[0][1] if header else None
    n_columns = len(head[0][1])
    first_line = head[0][0]
    if names is not None:
        seen: dict[str, int] = {}
        for j, name in enumerate(names):
            if name in seen:
                raise InvalidInputError(
                    f"{what} file {path}, line {first_line}: the header names {name!r} twice "
                    f"(columns {seen[name] + 1} and {j + 1})"
                )
            seen[name] = j
        head = head[1:]
        logger.info("%s: header row %s", path, names)
    if labels_only and n_columns != 1:
        raise InvalidInputError(
            f"{what} file {path}, line {first_line}: {n_columns} columns; expected one label "
            "per line"
        )
    t = _resolve_target(target, names, n_columns, path, what)
    k = _resolve_target(row_ids, names, n_columns, path, what, role="row id")
    if k is not None and k == t:
        raise InvalidInputError(
            f"{what} file {path}: {_column(k, names)} cannot be both the target and the row ids"
        )
    features = [j for j in range(n_columns) if j not in (t, k)]
    if not features and not labels_only:
        raise InvalidInputError(
            f"{what} file {path} has {n_columns} column(s) and no feature column besides the target"
        )
    _check_feature_count(
        path,
        len(features),
        n_features,
        what,
        n_columns,
        t is not None,
        file_names=None if names is None else [names[j] for j in features],
        model_names=model_names,
    )

    values = array("d")
    labels: list[str] = []
    label_lines = array("q")
    ids: list[str] = []
    n_rows = 0

    def rows() -> Iterator[tuple[int, list[str]]]:
        yield from head
        yield from records

    for line, fields in rows():
        if len(fields) != n_columns:
            like = "the header" if names is not None else "the first row"
            raise InvalidInputError(
                f"{what} file {path}, line {line}: {len(fields)} fields, expected {n_columns} "
                f"like {like} (line {first_line})"
            )
        for j in features:
            text = fields[j]
            if _is_missing(text):
                raise InvalidInputError(
                    f"{what} file {path}, line {line}, {_column(j, names)}: missing value "
                    f"({text!r}); fill or drop the row"
                )
            try:
                value = float(text)
            except ValueError:
                raise InvalidInputError(
                    f"{what} file {path}, line {line}, {_column(j, names)}: {text!r} is not a "
                    "number; feature columns must be numeric"
                    + (f" (the target is {_column(t, names)})" if t is not None else "")
                ) from None
            if not math.isfinite(value):
                raise InvalidInputError(
                    f"{what} file {path}, line {line}, {_column(j, names)}: {text!r} is not a "
                    "finite number"
                )
            values.append(value)
        if t is not None:
            text = fields[t]
            if _is_missing(text):
                raise InvalidInputError(
                    f"{what} file {path}, line {line}, {_column(t, names)} (target): missing "
                    f"value ({text!r}); fill or drop the row"
                )
            labels.append(text)
            label_lines.append(line)
        if k is not None:
            ids.append(fields[k])
        n_rows += 1
        if max_rows is not None and n_rows > max_rows:
            _check_row_count(path, n_rows, max_rows, what)
        if first_rows is not None and n_rows >= first_rows:
            break
    if n_rows == 0:
        raise InvalidInputError(
            f"{what} file {path} has a header row (line {first_line}) but no data rows"
        )
    x = np.frombuffer(values, dtype=np.float64).reshape(n_rows, len(features)).copy()
    y = None if t is None else parse_labels(labels)
    return Table(
        x=x,
        y=y,
        feature_names=None if names is None else tuple(names[j] for j in features),
        target_name=None if names is None or t is None else names[t],
        source=str(path),
        row_ids=None if k is None else tuple(ids),
        row_ids_name=None if names is None or k is None else names[k],
    )


def _npy_header(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, checking the file holds exactly that much data."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = handle.tell()
    except ValueError as exc:
        raise InvalidInputError(f"{what} file {path} is not a readable .npy file: {exc}") from exc
    del fortran
    if dtype.hasobject:
        raise InvalidInputError(
            f"{what} file {path} holds Python objects (dtype {dtype}); only numbers are read "
            "(pickled data is never loaded)"
        )
    expected = offset + math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    if size != expected:
        raise InvalidInputError(
            f"{what} file {path} is {size} bytes but its header announces shape {shape} of "
            f"{dtype} ({expected} bytes): truncated or corrupted"
        )
    return shape, dtype


def _read_npy_table(
    path: Path,
    target: int | str | None,
    n_features: int | None,
    max_rows: int | None,
    first_rows: int | None,
    what: str,
    model_names: Sequence[str] | None = None,
) -> Table:
    shape, dtype = _npy_header(path, what)
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{what} file {path} holds dtype {dtype}; expected numbers (int or float)"
        )
    if len(shape) != 2:
        hint = " (a 1-D file holds labels: give it with --labels)" if len(shape) == 1 else ""
        raise InvalidInputError(
            f"{what} file {path} has shape {shape}; expected a 2-D matrix (rows, columns){hint}"
        )
    n_rows, n_columns = shape
    if n_rows == 0:
        raise InvalidInputError(f"{what} file {path} has no rows (shape {shape})")
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        raise InvalidInputError(
            f"{what} file {path}: a .npy file has no column names, so the target {target!r} "
            f"must be a column index (0 to {n_columns - 1}, or -1 for the last)"
        )
    t = _resolve_target(target, None, n_columns, path, what)
    features = [j for j in range(n_columns) if j != t]
    if not features:
        raise InvalidInputError(
            f"{what} file {path} has shape {shape}: no feature column besides the target"
        )
    _check_feature_count(
        path, len(features), n_features, what, n_columns, t is not None, model_names=model_names
    )
    if first_rows is None:
        _check_row_count(path, n_rows, max_rows, what)
    take = n_rows if first_rows is None else min(first_rows, n_rows)
    # A memory map reads only the rows asked for.
    data = np.load(path, allow_pickle=False, mmap_mode="r")
    try:
        block = np.array(data[:take], dtype=np.float64 if t is None else None)
    finally:
        del data
    x = block[:, features].astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(x[row, col]) else "infinity"
        rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise InvalidInputError(
            f"{what} file {path} contains {kind} (rows {rows}, 0-based; first at column index "
            f"{features[col]}); expected finite numbers"
        )
    y = None
    if t is not None:
        y = block[:, t]
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y))[0])
            raise InvalidInputError(
                f"{what} file {path}: row index {row} of the target column holds {y[row]}"
            )
    return Table(x=x, y=y, feature_names=None, target_name=None, source=str(path))
