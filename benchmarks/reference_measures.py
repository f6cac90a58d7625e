"""What both reference scripts (``reference.py``, ``conv_reference.py``) measure the same way,
in Concrete ML's own environment (fheqnn is not importable there): the simulations' accuracy
and stability, the key generation, and single encrypted rows."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def measure_circuit(
    row: dict,
    circuit,
    labels_of: Callable[[np.ndarray, str], np.ndarray],
    x_te: np.ndarray,
    y_te: np.ndarray,
    rows: int,
) -> None:
    """Fill ``row``: ``labels_of(x, fhe)`` predicts labels in an FHE mode; ``circuit`` is the
    compiled Concrete circuit (its keys are generated here)."""
    # Ten simulations of the test rows: their mean accuracy, and the rows whose label changed.
    passes = np.array([labels_of(x_te, "simulate") for _ in range(10)])
    row["acc_simulated"] = float(np.mean(passes == y_te))
    row["simulate_unstable_rows"] = int(np.sum(np.any(passes != passes[0], axis=0)))
    start = time.perf_counter()
    circuit.keygen(force=True)
    row["keygen_s"] = time.perf_counter() - start
    row["eval_keys_mb"] = len(circuit.keys.evaluation.serialize()) / 1e6
    if rows > 0:
        labels_of(x_te[:1], "execute")  # warm-up, as fheqnn's measure does
        times, correct = [], 0
        for i in range(rows):
            start = time.perf_counter()
            label = labels_of(x_te[i : i + 1], "execute")[0]
            times.append(time.perf_counter() - start)
            correct += int(label == y_te[i])
        row["latency_single_s"] = statistics.median(times)
        row["acc_encrypted_rows"] = correct / rows
