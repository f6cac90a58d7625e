"""The :class:`Table` a data file is read into, what a field's text holds (a number, a missing
value), and the choice of its columns (target, row ids, features), for the CSV and .npy readers.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

#: Field values read as "missing" (compared lower-cased, after stripping spaces).
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "?"})


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
