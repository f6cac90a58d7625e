"""One validation style: feature matrices for every entry point that takes data, and the
``check_*`` helpers that every option checks its value with.

A configuration dataclass declares each field's constraint next to the field
(:func:`bounded`) and checks them all in ``__post_init__`` (:func:`check_fields`); the command
line builds its argparse types from the same declarations (``fheqnn.cli.options``), so a bound
is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidParameterError


def check_features(
    x: Any,
    n_features: int | None = None,
    *,
    what: str = "X",
    row_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Validate a feature matrix and return it as float64, shape ``(n_rows, n_features)``.

    ``row_shape``: the shape of one row for a model that takes images (e.g. ``(1, 8, 8)``);
    rows of exactly that shape are flattened (C order), and flat rows are accepted too.

    Raises:
        InvalidInputError: not 2-D (nor rows of ``row_shape``), empty, non-numeric dtype, NaN
            or infinite values, or a feature count other than ``n_features``.
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
    if row_shape is not None and arr.ndim == 1 + len(row_shape) and arr.ndim > 2:
        if tuple(arr.shape[1:]) != tuple(row_shape):
            raise InvalidInputError(
                f"{what} has rows of shape {arr.shape[1:]}, expected {tuple(row_shape)}"
            )
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2:
        expected = "(n_rows, n_features)"
        if row_shape is not None:
            expected += f" or (n_rows, {', '.join(map(str, row_shape))})"
        raise InvalidInputError(f"{what} must be {expected}, got shape {arr.shape}")
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


@dataclass(frozen=True)
class Bounds:
    """A field's declared constraint: an int (``integer``) or a finite number within bounds;
    ``optional``: ``None`` is also accepted."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def check(self, name: str, value: Any) -> Any:
        """``value`` checked (:func:`check_int` or :func:`check_number`)."""
        if value is None and self.optional:
            return None
        if self.integer:
            low = None if self.low is None else int(self.low)
            high = None if self.high is None else int(self.high)
            return check_int(name, value, low, high)
        return check_number(
            name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open
        )

    def parse(self, text: str) -> Any:
        """A command-line value as this field's type (``ValueError`` when it is not one)."""
        return int(text) if self.integer else float(text)


def bounded(default: Any, bounds: Bounds) -> Any:
    """A dataclass field with a default and its declared constraint (see :func:`check_fields`)."""
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def field_bounds(cls: type, name: str) -> Bounds:
    """The constraint declared for field ``name`` of dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name and "bounds" in f.metadata:
            return f.metadata["bounds"]
    raise KeyError(f"{cls.__name__}.{name} declares no bounds")


def check_fields(obj: Any) -> None:
    """Check every field of a dataclass instance that declares a constraint, in order, and
    keep the checked value (a numpy integer becomes an int); frozen instances included."""
    for f in dataclasses.fields(obj):
        bounds = f.metadata.get("bounds")
        if bounds is not None:
            object.__setattr__(obj, f.name, bounds.check(f.name, getattr(obj, f.name)))
