"""The lookup floor: what a circuit's table lookups alone cost, measured in this process, and
a benchmark row's latency against it."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np


def lookup_floor(
    bits: int, repeats: int = 3, batch: int = 64, p_error: float | None = None
) -> dict[str, float]:
    """Cost of table lookups at ``bits`` input precision, measured in this process.

    A circuit of ``batch`` independent lookups (so every core works) and one of a single lookup,
    both encrypted and run ``repeats`` times; medians. ``p_error``: the error probability per
    lookup of the model it is a floor for (``None``: Concrete's default, as such a model has);
    a stricter one would pick larger parameters and make the floor look slower than it is.

    Returns:
        ``per_lookup_s`` (batched, per lookup), ``single_lookup_s`` (one lookup alone, fixed
        overhead included), ``bits``.
    """
    from ..compiler.backend import make_configuration
    from ..concrete_seam import fhe as concrete_fhe

    fhe = concrete_fhe()
    rng = np.random.default_rng(0)
    top = 2 ** (bits - 1)
    results = {}
    for name, size in (("batch", batch), ("single", 1)):

        def circuit(x):
            return fhe.univariate(lambda v: (v * 3) % (2 ** max(1, bits - 1)))(x)

        inputset = [rng.integers(-top, top, size=(1, size)) for _ in range(20)]
        inputset += [np.full((1, size), -top), np.full((1, size), top - 1)]
        configuration = make_configuration(**({} if p_error is None else {"p_error": p_error}))
        compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration)
        compiled.keygen()
        sample = rng.integers(-top, top, size=(1, size))
        args = compiled.encrypt(sample)
        compiled.run(args)  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            compiled.run(args)
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    return {
        "bits": bits,
        "per_lookup_s": results["batch"] / batch,
        "single_lookup_s": results["single"],
    }


def floor_measures(row: dict[str, Any], floors: dict[Any, dict], repeats: int) -> dict[str, Any]:
    """A measured row's lookup floor: ``lookup_cost_s``, ``lone_lookup_s``, ``floor_s``,
    ``floor_rows_s`` and, when the row has a single-row latency, ``latency_over_floor``.

    ``floors`` caches :func:`lookup_floor` by (bits, p_error) across rows.
    """
    out: dict[str, Any] = {}
    # Each layer's lookups at their own precision (approximate rounding: one lookup per
    # neuron); exact rounding's extra rounding lookups are counted at the widest precision.
    per_layer = [(r["neurons"], r["lookup_bits"]) for r in row["layers"] if r["lookup_bits"]]
    if sum(n for n, _ in per_layer) != row["pbs"]:
        per_layer = [(row["pbs"], row["lookup_bits_max"] or 1)]
    if not row["pbs"]:
        # No lookup left: Concrete folded every table that is constant over its inputs (iris,
        # width x1 pruned 75 %, seed 1: one neuron per hidden layer, both constant). The
        # circuit is leveled only; it has no lookup floor.
        return {
            "lookup_cost_s": None,
            "lone_lookup_s": None,
            "floor_s": 0.0,
            "floor_rows_s": None,
            **({"latency_over_floor": None} if "latency_single_s" in row else {}),
        }
    floor_s = 0.0
    for count, bits in per_layer:
        key = (bits, row["p_error"])
        if key not in floors:
            floors[key] = lookup_floor(bits, repeats=max(1, repeats), p_error=row["p_error"])
        floor_s += count * floors[key]["per_lookup_s"]
    widest = floors[(max(b for _, b in per_layer), row["p_error"])]
    out["lookup_cost_s"] = widest["per_lookup_s"]
    out["lone_lookup_s"] = widest["single_lookup_s"]
    out["floor_s"] = floor_s
    # The most rows per second the lookups alone allow, every core busy.
    out["floor_rows_s"] = 1.0 / out["floor_s"]
    if "latency_single_s" in row:
        out["latency_over_floor"] = row["latency_single_s"] / out["floor_s"]
    return out
