"""Measuring one compiled model: its compile report, its accuracy in the clear and simulated,
and, encrypted, its keys, latency, accuracy and throughput (``fheqnn bench`` and ``fheqnn
demo`` both measure with these)."""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# One logger for the whole benchmark (``fheqnn.bench``), as before its split into modules.
logger = logging.getLogger(__package__)

#: Per layer, what a benchmark row keeps of the compile report.
_LAYER_KEYS = (
    "layer",
    "neurons",
    "max_nonzeros",
    "proven_bits",
    "measured_bits",
    "lookup_bits",
    "round_lsbs",
    "allowed_bits",
    "ok",
)


def summary_measures(model: Any) -> dict[str, Any]:
    """What a row keeps of the compiled ``model``'s summary: compile time, PBS count, neurons,
    bit widths by layer, rounding, ``p_error``, estimated cost, widest lookup."""
    summary = model.summary()
    row: dict[str, Any] = {
        "compile_s": summary["compile_seconds"],
        "pbs": summary["pbs_count"],
        "hidden_neurons": summary["hidden_neurons"],
        "removed_neurons": summary["removed_neurons"],
        "max_bit_width": summary["max_bit_width"],
        "layers": [{k: r[k] for k in _LAYER_KEYS} for r in summary["layers"]],
        "rounding": "exact" if summary["rounding_exact"] else "approximate",
        "p_error": summary["p_error"],
        "p_error_curve": summary["p_error_curve"],
        "estimated_s_per_row": summary["estimated_seconds_per_row"],
        "profile": summary["profile"],
        "complexity": summary["complexity"],
        "bit_exact": summary["stability"].get("bit_exact"),
        "unstable_calibration_share": summary["stability"].get("unstable_calibration_share"),
    }
    lookup_bits = [r["lookup_bits"] for r in summary["layers"] if r["lookup_bits"]]
    row["lookup_bits_max"] = max(lookup_bits) if lookup_bits else None
    return row


def integer_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the integer program in the clear (``fhe="disable"``)."""
    return float(np.mean(model.predict(x, fhe="disable") == y))


#: Simulations of the test rows per model: a row is unstable when its label is not the same in
#: all of them (the figure issue 24 asks for: rows that change over 10 passes).
SIMULATION_PASSES = 10


def simulated_measures(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Of :data:`SIMULATION_PASSES` simulations of the circuit on every row: ``acc_simulated``
    (their mean accuracy), ``simulate_unstable_rows`` (rows whose label changed between them)
    and ``simulate_s_per_row`` (of one pass)."""
    start = time.perf_counter()
    passes = np.array([model.predict(x, fhe="simulate") for _ in range(SIMULATION_PASSES)])
    seconds = (time.perf_counter() - start) / SIMULATION_PASSES
    changed = np.any(passes != passes[0], axis=0)
    return {
        "acc_simulated": float(np.mean(passes == np.asarray(y))),
        "simulate_unstable_rows": int(np.sum(changed)),
        "simulate_s_per_row": seconds / len(x),
    }


def key_measures(info: Any) -> dict[str, float]:
    """``keygen_s`` and ``eval_keys_mb`` of a client's key generation (its ``KeygenInfo``)."""
    return {
        "keygen_s": info.keygen_seconds,
        "eval_keys_mb": info.evaluation_keys_bytes / 1e6,
    }


def single_row_latency(client: Any, server: Any, row: np.ndarray, repeats: int) -> dict[str, Any]:
    """One row (``row``, shape ``(1, n_features)``) encrypted once, run once untimed as a
    warm-up (the first run on new keys decompresses them: ``first_run_s``), then ``repeats``
    times (at least once) alone: ``ciphertext_in_bytes_per_row``, ``latency_single_s``
    (median), ``ciphertext_out_bytes_per_row``. The reference warms up the same way."""
    single = client.encrypt(row)
    start = time.perf_counter()
    result = server.run(single)
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = server.run(single)
        times.append(time.perf_counter() - start)
    return {
        "ciphertext_in_bytes_per_row": len(single),
        "first_run_s": first,
        "latency_single_s": statistics.median(times),
        "ciphertext_out_bytes_per_row": len(result),
    }


def round_trip_measures(model: Any, trip: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """An encrypted round trip of the rows ``x`` (the runtime's ``RoundTrip``) against their
    labels ``y`` and the simulated circuit: ``latency_batch_s_per_row``, ``batch_rows``,
    ``acc_encrypted``, ``encrypted_rows``, ``encrypted_equals_simulated``."""
    n = len(x)
    pred = trip.predictions
    return {
        "latency_batch_s_per_row": trip.seconds_per_row,
        "batch_rows": n,
        "acc_encrypted": float(np.mean(pred == y)),
        "encrypted_rows": n,
        "encrypted_equals_simulated": float(np.mean(pred == model.predict(x, fhe="simulate"))),
    }


def encrypted_measures(
    model: Any, x: np.ndarray, y: np.ndarray, rows: int, repeats: int, client_cls, server_cls
) -> dict[str, Any]:
    """Keys, single-row latency and an encrypted round trip of the first ``rows`` rows, with
    ``model`` saved and given keys in a temporary folder."""
    from ..runtime import encrypted_predict

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, keys = Path(tmp) / "model", Path(tmp) / "keys"
        model.save(folder)
        client = client_cls(folder)
        out.update(key_measures(client.keygen(keys)))
        server = server_cls(folder)
        server.register_evaluation_keys(client.evaluation_keys())
        n = min(rows, len(x))
        out.update(single_row_latency(client, server, x[:1], repeats))
        trip = encrypted_predict(client, server, x[:n], chunk=n)
        out.update(round_trip_measures(model, trip, x[:n], y[:n]))
    return out


def throughput(
    model: Any,
    x: np.ndarray,
    batch_sizes: tuple[int, ...],
    client_cls: Any,
    server_cls: Any,
) -> dict[str, Any]:
    """Encrypted rows per second of ``x`` for circuits that take each of ``batch_sizes`` rows.

    Each batch size is the same lowered program compiled for it (``model`` itself when it
    has that batch size; otherwise :meth:`~fheqnn.compiler.api.CompiledModel.with_batch_size`,
    which keeps its rounding and error probability), saved and given keys (neither timed).
    Then encrypt -> run -> decrypt of every row through the client and server classes, after
    one untimed call: batch size 1 as the single-row loop (one call per row, one after the
    other); larger ones as one request of ceil(n / B) ciphertexts, which the server runs on
    its threads.

    Returns:
        ``throughput_rows`` (n), ``throughput_rows_s`` (rows/s by batch size, keys are strings
        for JSON), ``throughput_agreement`` (share of rows whose prediction, by batch size,
        equals the first batch size's: below 1 only from approximate rounding or bootstrap
        errors).
    """
    rates: dict[str, float] = {}
    agreement: dict[str, float] = {}
    first: np.ndarray | None = None
    for size in batch_sizes:
        compiled = model if model.batch_size == size else model.with_batch_size(size)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            compiled.save(folder)
            client = client_cls(folder)
            client.keygen(Path(tmp) / "keys")
            server = server_cls(folder)
            server.register_evaluation_keys(client.evaluation_keys())
            parts = [x[i : i + 1] for i in range(len(x))] if size == 1 else [x]
            client.decrypt(server.run(client.encrypt(x[:1])))  # warm-up, not timed
            start = time.perf_counter()
            predictions = [client.decrypt(server.run(client.encrypt(part))) for part in parts]
            seconds = time.perf_counter() - start
        pred = np.concatenate(predictions)
        first = pred if first is None else first
        rates[str(size)] = len(x) / seconds
        agreement[str(size)] = float(np.mean(pred == first))
        logger.info("throughput, %d row(s) per call: %.3f rows/s", size, rates[str(size)])
    return {
        "throughput_rows": len(x),
        "throughput_rows_s": rates,
        "throughput_agreement": agreement,
    }
