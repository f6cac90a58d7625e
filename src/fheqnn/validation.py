"""One validation of feature matrices for every entry point that takes data."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError


def check_features(x: Any, n_features: int | None = None, *, what: str = "X") -> np.ndarray:
    """Validate a feature matrix and return it as float64, shape ``(n_rows, n_features)``.

    Raises:
        InvalidInputError: not 2-D, empty, non-numeric dtype, NaN or infinite values, or a
            feature count other than ``n_features``.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInputError(f"{what} cannot be read as an array: {exc}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise InvalidInputError(f"{what} must hold numbers (int or float), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be 2-D (n_rows, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{what} has no rows")
    if n_features is not None and arr.shape[1] != n_features:
        raise InvalidInputError(
            f"{what} has {arr.shape[1]} features per row, expected {n_features}"
        )
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        rows = np.unique(np.nonzero(np.isnan(arr))[0])[:5].tolist()
        raise InvalidInputError(f"{what} contains NaN (rows {rows}...)")
    if np.isinf(arr).any():
        rows = np.unique(np.nonzero(np.isinf(arr))[0])[:5].tolist()
        raise InvalidInputError(f"{what} contains infinity (rows {rows}...)")
    return arr
