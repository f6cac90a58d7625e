"""The ``p_error`` search: the error probability per lookup, and the rounding under its noise,
whose circuit Concrete ranks cheapest (``CompileOptions(p_error="auto")``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import backend
from .lowering import Lowered, announce, round_for

logger = logging.getLogger(__name__)


def key_bytes_estimate(statistics: dict[str, Any]) -> int:
    """Concrete's estimate of the evaluation keys (bootstrap + key-switch), in bytes.

    It counts the expanded (Fourier-domain) keys, 5-8 x what is generated and sent.
    """
    return int(
        statistics.get("size_of_bootstrap_keys", 0) + statistics.get("size_of_keyswitch_keys", 0)
    )


#: Candidates whose complexity is within this share of the least are equally fast for the
#: choice, which then takes the smallest evaluation keys (key generation time and the upload
#: follow them), then the smaller error probability.
COMPLEXITY_TIE = 0.1


def choose_p_error(
    lowered: Lowered, inputset: list[np.ndarray], curve: list[dict[str, Any]]
) -> tuple[Lowered, Any, float]:
    """The error probability per lookup, and the rounding under its noise, that Concrete's cost
    estimate ranks cheapest.

    Every candidate of :data:`~fheqnn.compiler.options.P_ERROR_CANDIDATES` gets the rounding
    the accuracy guard chooses under the noise model of that error probability
    (:func:`~fheqnn.compiler.lowering.round_for`: accuracy, boundary agreement and stability
    judged on seeded draws, ``fheqnn.compiler.noise``), and is compiled. Among those whose
    rounding keeps the guard, the least complexity wins (Concrete's own cost estimate of the
    compiled circuit, a deterministic figure: no candidate is timed and no key is generated);
    within :data:`COMPLEXITY_TIE` of it, the smallest evaluation keys, then the smaller error
    probability. So the same model, calibration rows and options give the same choice on any
    machine. ``curve`` receives one entry per candidate.

    Returns:
        The chosen lowering (its rounding announced), its circuit and its error probability.
    """
    from .options import P_ERROR_CANDIDATES

    batch_size = lowered.contract.batch_size
    compiled = []
    for p_error in P_ERROR_CANDIDATES:
        global_p_error = lowered.options.global_p_error
        candidate = (
            lowered
            if (lowered.noise_p_error, lowered.noise_global_p_error) == (p_error, global_p_error)
            else round_for(lowered, p_error, global_p_error)
        )
        configuration = backend.make_configuration(**lowered.options.concrete_options(p_error))
        circuit = backend.compile_circuit(candidate.program, inputset, configuration)
        choice = candidate.rounding
        entry: dict[str, Any] = {
            "p_error": p_error,
            "pbs": int(circuit.programmable_bootstrap_count) // batch_size,
            "complexity": float(circuit.complexity),
            "evaluation_keys_bytes_estimate": key_bytes_estimate(circuit.statistics),
            "lookup_bits": [
                layer.lookup_bits() for layer in candidate.program.layers if layer.is_hidden
            ],
            "rounding_exact": choice.exact,
            "guard_ok": choice.guard_ok,
            "agreement": choice.agreement,
            "calibration_score": choice.score,
            "boundary_agreement": choice.boundary_agreement,
            "unstable": choice.unstable,
        }
        curve.append(entry)
        compiled.append((candidate, circuit, entry))
    keeping = [item for item in compiled if item[2]["guard_ok"]]
    if not keeping:
        # None keeps the guard: the most stable, then the cheapest, and the guard says so.
        least_unstable = min(item[2]["unstable"] or 0.0 for item in compiled)
        keeping = [item for item in compiled if (item[2]["unstable"] or 0.0) == least_unstable]
    least = min(item[2]["complexity"] for item in keeping)
    close = [item for item in keeping if item[2]["complexity"] <= least * (1 + COMPLEXITY_TIE)]
    chosen, circuit, entry = min(
        close, key=lambda item: (item[2]["evaluation_keys_bytes_estimate"], item[2]["p_error"])
    )
    entry["chosen"] = True
    logger.info(
        "p_error: %s -> %g",
        ", ".join(f"{e['p_error']:g}: complexity {e['complexity']:.3g}" for e in curve),
        entry["p_error"],
    )
    if chosen is not lowered or not chosen.announced:
        chosen = announce(chosen)
    return chosen, circuit, entry["p_error"]
