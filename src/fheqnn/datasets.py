"""The data sets shipped with scikit-learn that the demo, the tests and the benchmarks use."""

from __future__ import annotations

import numpy as np

from .errors import InvalidParameterError

# scikit-learn's loader of each name; imported on use, so that the CLI (which lists the names)
# starts without loading scikit-learn.
_LOADERS = {
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
}

#: The regression data sets among ``DATASETS`` (the others are classification).
REGRESSION = ("diabetes",)

#: The classification data sets (what the CLI's ``--dataset`` offers).
DATASETS = tuple(name for name in _LOADERS if name not in REGRESSION)
#: Every name accepted by :func:`load_split`.
ALL_DATASETS = tuple(_LOADERS)


def load_split(
    name: str, *, standardize: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The benchmark split of a scikit-learn data set.

    75 % / 25 % split with ``random_state=0`` (stratified for classification); features
    standardized with the mean and variance of the training part unless ``standardize`` is
    false (raw features, as users bring them).

    Returns:
        ``(x_train, x_test, y_train, y_test)``, features as float64.
    """
    if name not in _LOADERS:
        raise InvalidParameterError(f"unknown data set {name!r}; choose one of {ALL_DATASETS}")
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, _LOADERS[name])(return_X_y=True)
    stratify = None if name in REGRESSION else y
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, stratify=stratify, random_state=0
    )
    if not standardize:
        return x_tr, x_te, y_tr, y_te
    scaler = StandardScaler().fit(x_tr)
    return scaler.transform(x_tr), scaler.transform(x_te), y_tr, y_te
