"""Labels: read from their text as they were written, and checked to allow training."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError
from .table import _is_number


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
