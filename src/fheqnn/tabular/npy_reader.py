"""Reading .npy files: shape and dtype checked from the header before any data is loaded (never
pickled objects), rows taken through a memory map, every value checked to be finite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .limits import _check_row_count
from .table import Table, _check_feature_count, _resolve_target


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


def _read_npy_labels(path: Path, max_rows: int | None, what: str) -> np.ndarray:
    """A label vector from a 1-D or one-column .npy file of numbers or strings."""
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
    images = len(shape) > 2
    if images and target is not None:
        raise InvalidInputError(
            f"{what} file {path} has shape {shape}: rows of images hold no target column; give "
            "the labels in their own file (--labels)"
        )
    if len(shape) < 2:
        raise InvalidInputError(
            f"{what} file {path} has shape {shape}; expected a 2-D matrix (rows, columns) or "
            "rows of images (rows, channels, height, width) (a 1-D file holds labels: give it "
            "with --labels)"
        )
    # Rows of images are read flat, in C order: the layout a convolutional model's client
    # flattens them to.
    n_rows, n_columns = shape[0], math.prod(shape[1:])
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
        block = block.reshape(len(block), n_columns)
    finally:
        del data
    x = block[:, features].astype(np.float64)
    _check_finite_features(x, features, path, what)
    y = None
    if t is not None:
        y = block[:, t]
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y))[0])
            raise InvalidInputError(
                f"{what} file {path}: row index {row} of the target column holds {y[row]}"
            )
    return Table(x=x, y=y, feature_names=None, target_name=None, source=str(path))


def _check_finite_features(x: np.ndarray, features: list[int], path: Path, what: str) -> None:
    """Refuse NaN or infinity among the features, naming the first rows and column that hold it."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(x[row, col]) else "infinity"
        rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise InvalidInputError(
            f"{what} file {path} contains {kind} (rows {rows}, 0-based; first at column index "
            f"{features[col]}); expected finite numbers"
        )
