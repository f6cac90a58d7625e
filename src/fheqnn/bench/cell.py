"""One benchmark configuration (a data set and a pruning percentage): train the default
network, compile it and measure it; its JSON row."""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from .baseline import float_mlp_accuracy
from .floor import floor_measures
from .measure import (
    encrypted_measures,
    integer_accuracy,
    simulated_measures,
    summary_measures,
    throughput,
)
from .options import DEFAULT_WIDTH, BenchOptions


def _load(name: str) -> tuple[np.ndarray, ...]:
    from ..datasets import load_split

    return load_split(name)


def machine_load() -> float | None:
    """1-minute load average (a benchmark on a busy machine is worth less)."""
    try:
        import os

        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover
        return None


def bench_one(
    dataset: str,
    prune: float,
    opts: BenchOptions,
    floors: dict[Any, dict],
    width: int = DEFAULT_WIDTH,
) -> dict:
    """Train (hidden width ``width`` x the features), compile (``opts.exact``: the bit-exact
    profile) and measure one configuration; returns its JSON row."""
    from ..contract import range_warnings_off

    # A shipped data set's own split: its rare far values (a digits pixel) are the data's.
    with range_warnings_off():
        return _bench_one(dataset, prune, opts, floors, width)


def _bench_one(
    dataset: str, prune: float, opts: BenchOptions, floors: dict[Any, dict], width: int
) -> dict:
    from .. import FheModelClient, FheModelServer

    x_tr, x_te, y_tr, y_te = _load(dataset)
    row: dict[str, Any] = {
        "system": "fheqnn",
        "dataset": dataset,
        "prune": prune,
        "width": width,
        "seed": opts.seed,
        "epochs": opts.epochs,
        "load_before": machine_load(),
        "python": platform.python_version(),
    }
    clf = _train(row, prune, width, opts, x_tr, y_tr)
    row["acc_clear"] = float(clf.score(x_te, y_te))
    if opts.float_baseline:
        row["acc_float_mlp"] = float_mlp_accuracy(clf, x_tr, y_tr, x_te, y_te, opts.seed)
    model = _compile(row, clf, opts, x_tr, y_tr)
    row.update(summary_measures(model))
    row["acc_int"] = integer_accuracy(model, x_te, y_te)
    row.update(simulated_measures(model, x_te, y_te))
    if opts.encrypt_rows > 0:
        row.update(
            encrypted_measures(
                model, x_te, y_te, opts.encrypt_rows, opts.repeats, FheModelClient, FheModelServer
            )
        )
    if opts.throughput_rows > 0:
        rows = x_te[: opts.throughput_rows]
        row.update(throughput(model, rows, opts.throughput_batches, FheModelClient, FheModelServer))
    if opts.encrypt_rows > 0 or opts.throughput_rows > 0:
        row.update(floor_measures(row, floors, opts.repeats))
    row["load_after"] = machine_load()
    return row


def _train(row: dict[str, Any], prune: float, width: int, opts: BenchOptions, x_tr, y_tr) -> Any:
    """The default classifier trained with ``prune`` and hidden width ``width``; ``fit_s``,
    ``n_accum_bits`` and ``max_active_neurons`` go into ``row``."""
    from .. import NeuralNetClassifier

    clf = NeuralNetClassifier(
        module__n_prune_neurons_percentage=prune,
        module__n_hidden_neurons_multiplier=width,
        max_epochs=opts.epochs,
        random_state=opts.seed,
        verbose=0,
    )
    start = time.perf_counter()
    clf.fit(x_tr, y_tr)
    row["fit_s"] = time.perf_counter() - start
    row["n_accum_bits"] = clf.module_.n_accum_bits
    row["max_active_neurons"] = clf.module_.max_active_neurons()
    return clf


def _compile(row: dict[str, Any], clf: Any, opts: BenchOptions, x_tr, y_tr) -> Any:
    """``clf`` compiled as ``opts`` say; ``compile_total_s`` goes into ``row``."""
    start = time.perf_counter()
    # Public path: the estimator exports to ONNX and compiles with its own n_accum_bits.
    clf.compile(x_tr, y_tr, **opts.compile_options())
    row["compile_total_s"] = time.perf_counter() - start
    return clf.fhe_model_
