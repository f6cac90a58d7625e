"""One validation of feature matrices for every entry point that takes data."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidParameterError


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


# ----------------------------------------------------------------------------- options
# One style of option check for every entry point (the network's constructor, the estimators,
# the compiler options, the CLI through them): the message names the option, what was received
# and what is allowed, and the error is an InvalidParameterError (also a ValueError).


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within ``[low, high]`` (either bound may be None).

    Raises:
        InvalidParameterError: not an int (a bool is not one), or out of range.
    """
    if not _is_int(value):
        raise InvalidParameterError(
            f"{name} must be an int, got {value!r} ({type(value).__name__})"
        )
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidParameterError(f"{name} must be {_interval(low, high)}, got {value}")
    return value


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the given bounds (open or closed).

    Raises:
        InvalidParameterError: not a real number, not finite, or out of range.
    """
    if not _is_number(value) or not np.isfinite(float(value)):
        raise InvalidParameterError(f"{name} must be a finite number, got {value!r}")
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        raise InvalidParameterError(
            f"{name} must be a number {_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy's included)."""
    if not isinstance(value, bool | np.bool_):
        raise InvalidParameterError(f"{name} must be a bool (True or False), got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise InvalidParameterError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _interval(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> str:
    if low is None and high is None:
        return "any value"
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
