"""The readers' entry points: a .csv or .npy file, by its suffix, to features, labels or both."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .csv_reader import _read_csv_table
from .limits import MAX_TRAINING_BYTES, _check_file
from .npy_reader import _read_npy_labels, _read_npy_table
from .table import Table


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
        return _read_npy_labels(path, max_rows, what)
    if path.suffix.lower() != ".csv":
        raise InvalidInputError(
            f"{what} file {path}: unsupported file type {path.suffix!r} (use .csv or .npy)"
        )
    table = _read_csv_table(path, 0, None, None, max_bytes, max_rows, None, what, labels_only=True)
    assert table.y is not None  # target 0 is always read
    return table.y
