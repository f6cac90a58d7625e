"""Shared fixtures and the suite's own exit status.

Session fixtures build the tiny models that many modules need once per test process: a tiny
network trained on three Gaussian blobs, compiled twice (``a``: bit-exact, no rounding and
Concrete's default error probability, so encrypted, simulated and interpreted results agree bit
for bit; ``b``: 2-bit exact rounding, another model id for mismatch cases), and a key folder for
each. Tests read these folders and never change them: a test that writes works on a copy.

Markers (``pyproject.toml``): ``slow`` tests are left out of the default run (``python -m
pytest``) and run by the full one (``python -m pytest -m ""``, what CI runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import blobs, checksum, tiny_classifier

#: Keeps pytest's exit status if a test runs a circuit with Concrete directly.
pytest_plugins = ["keep_status"]


@dataclass(frozen=True)
class TinyModels:
    """Two compiled models of one tiny network (4 features, classes 'a', 'b', 'c').

    Attributes:
        root: folder holding everything below (read only for tests).
        x: the 90 training and calibration rows, shape ``(90, 4)``.
        y: their string labels.
        clf: the fitted estimator (last compiled as ``b``: use the folders, not its
            ``fhe_model_``).
        a, b: compiled model folders (``a`` bit-exact, ``b`` 2-bit exact rounding).
        keys_a, keys_b: key folders of ``a`` and ``b``.
    """

    root: Path
    x: np.ndarray
    y: np.ndarray
    clf: object
    a: Path
    b: Path
    keys_a: Path
    keys_b: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyModels]:
    """See :class:`TinyModels` (trained, compiled and given keys once per session). At the
    end of the session, an error if any test changed these folders."""
    from fheqnn import CompileAccuracyWarning, FheModelClient

    x, labels = blobs(1, 90, 4, 0.6)
    y = np.array(["a", "b", "c"])[labels]
    root = tmp_path_factory.mktemp("tiny_models")
    clf = tiny_classifier(x, y, max_epochs=20)
    # Concrete's default error probability (2**-40 per lookup) and no rounding: encrypted,
    # simulated and interpreted results are compared bit for bit.
    clf.compile(x, rounding="off", p_error=None)
    clf.fhe_model_.save(root / "a")
    with warnings.catch_warnings():
        # Model b only has to be another compiled model (another id); the guard rightly says
        # that 2-bit lookups cost this tiny network agreement.
        warnings.simplefilter("ignore", CompileAccuracyWarning)
        clf.compile(x, rounding=2, rounding_exact=True, p_error=None)
    clf.fhe_model_.save(root / "b")
    FheModelClient(root / "a").keygen(root / "keys_a")
    FheModelClient(root / "b").keygen(root / "keys_b")
    before = checksum(root)
    yield TinyModels(root, x, y, clf, root / "a", root / "b", root / "keys_a", root / "keys_b")
    if checksum(root) != before:
        raise AssertionError(f"a test changed the shared tiny models in {root}")
