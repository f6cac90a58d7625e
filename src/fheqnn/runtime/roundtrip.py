"""One encrypted round trip: encrypt on the client, run on the server, decrypt on the client.

The CLI's ``predict``, the demo and the benchmarks all go through :func:`encrypted_predict`, so
they measure and report the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoundTrip:
    """Result of :func:`encrypted_predict`.

    Attributes:
        outputs: decrypted float outputs, before post-processing (n_rows, n_outputs).
        predictions: post-processed outputs (class labels, values or raw outputs).
        server_seconds: time spent in the server's runs (s), encryption and decryption excluded.
        rows: number of rows.
    """

    outputs: np.ndarray
    predictions: np.ndarray
    server_seconds: float
    rows: int

    @property
    def seconds_per_row(self) -> float:
        """Server time per row (s)."""
        return self.server_seconds / max(1, self.rows)


def encrypted_predict(
    client: Any,
    server: Any,
    x: np.ndarray,
    *,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> RoundTrip:
    """Encrypt -> run -> decrypt ``x`` in chunks (a chunk's ciphertexts run in parallel).

    A ciphertext holds the model's ``batch_size`` rows: a chunk of k rows is ceil(k / batch_size)
    circuit calls.

    Args:
        client: a :class:`~fheqnn.runtime.client.FheModelClient` with keys loaded.
        server: a :class:`~fheqnn.runtime.server.FheModelServer`; the client's evaluation keys
            are registered with it first when it does not hold them yet.
        x: float rows (n_rows, n_features).
        chunk: rows per server call (default: the server's worker count times the batch size,
            one circuit call per worker).
        progress: called with the number of rows finished after each chunk.
    """
    # The rows are checked (and warned about) as a whole, once; then encrypted in parts.
    x = client.part.check_and_warn(x)
    batch = getattr(client, "batch_size", 1)
    step = max(1, chunk or getattr(server, "workers", 1) * batch)
    outputs, server_s = [], 0.0
    key_id = client.key_info.key_id if client.key_info is not None else None
    if key_id is None or not server.has_keys(key_id):
        # Once per key, outside the timed runs: the server caches deserialized keys.
        server.register_evaluation_keys(client.evaluation_keys())
    for start in range(0, len(x), step):
        part = x[start : start + step]
        blob = client.encrypt(part, check_range=False)
        t0 = time.perf_counter()
        result = server.run(blob)
        server_s += time.perf_counter() - t0
        outputs.append(client.decrypt_raw(result))
        if progress is not None:
            progress(len(part))
    raw = np.concatenate(outputs) if outputs else np.zeros((0, client.part.n_outputs))
    return RoundTrip(raw, client.part.postprocess(raw), server_s, len(x))
