"""The ``p_error`` search: the error probability per lookup that compiles the fastest circuit
whose simulation keeps the accuracy guard (``CompileOptions(p_error="auto")``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from . import backend
from .backend import run_in_chunks
from .guard import GuardScore
from .lowering import Lowered

logger = logging.getLogger(__name__)


#: Calibration rows the ``p_error="auto"`` search simulates per candidate. Not more: the
#: boundary criterion takes the 50 rows nearest the boundary among them, and among 426 rows
#: those are nearer than among 200, so more rows made every candidate fail more often
#: (breast cancer fell to 1e-4: slower, larger keys; session 4).
P_ERROR_GUARD_ROWS = 200


def key_bytes_estimate(statistics: dict[str, Any]) -> int:
    """Concrete's estimate of the evaluation keys (bootstrap + key-switch), in bytes.

    It counts the expanded (Fourier-domain) keys, 5-8 x what is generated and sent.
    """
    return int(
        statistics.get("size_of_bootstrap_keys", 0) + statistics.get("size_of_keyswitch_keys", 0)
    )


def _parameters(circuit: Any) -> str:
    """The cryptographic parameters of a circuit's lookups (bootstrap and key-switch keys)."""
    stats = circuit.statistics
    keys = [
        *stats.get("programmable_bootstrap_count_per_parameter", {}),
        *stats.get("key_switch_count_per_parameter", {}),
    ]
    return "|".join(sorted(str(key) for key in keys))


#: Timed runs per candidate when ``p_error="auto"`` compares the speed of candidates (the
#: fastest counts; one untimed run before them).
P_ERROR_TIMED_RUNS = 2


#: Above this many bytes of expanded evaluation keys (Concrete's estimate) a candidate is not
#: timed: keys and runs that large make the comparison cost more than a compile should, so the
#: largest error probability that keeps the guard is kept, as without timing.
P_ERROR_TIMING_MAX_KEY_BYTES = 500_000_000


def _seconds_per_call(circuit: Any, chunk: np.ndarray) -> float:
    """Measured seconds of one encrypted call of ``circuit`` on ``chunk`` (keys made first)."""
    circuit.keygen()
    args = circuit.encrypt(chunk)
    circuit.run(args)  # the first call pays one-off set-up costs
    times = []
    for _ in range(P_ERROR_TIMED_RUNS):
        start = time.perf_counter()
        circuit.run(args)
        times.append(time.perf_counter() - start)
    return min(times)


#: Simulations of the :data:`P_ERROR_GUARD_ROWS` rows per candidate; their mean score counts,
#: as the rounding guard counts the mean of its draws (bootstrap errors and approximate
#: rounding draw anew in every simulation).
P_ERROR_GUARD_PASSES = 3


#: Rows more than the rounding guard allows that a candidate's simulation may lose, per
#: criterion (one of the 50 boundary rows is 2 points). The rounding was chosen as the
#: cheapest that just keeps the guard under our model of approximate rounding; Concrete's own
#: rounding is about twice as noisy (``benchmarks/approx_spread.py``), so without it every
#: candidate sat on the threshold and the same program got 1e-3, 1e-4 or Concrete's default
#: between compiles (breast cancer, session 5), with no measurable difference in held-out
#: accuracy between them.
P_ERROR_SLACK_ROWS = 1


def _simulated_score(circuit: Any, lowered: Lowered, q: np.ndarray) -> GuardScore:
    """The guard's score of the simulated circuit on rows ``q``: the mean of
    :data:`P_ERROR_GUARD_PASSES` simulations."""
    scores = []
    for _ in range(P_ERROR_GUARD_PASSES):
        raw = run_in_chunks(circuit.simulate, q, lowered.contract)
        scores.append(
            lowered.guard.score_outputs(lowered.contract.dequantize(lowered.contract.unshift(raw)))
        )
    return GuardScore.mean(scores)


def choose_p_error(
    lowered: Lowered, inputset: list[np.ndarray], curve: list[dict[str, Any]]
) -> tuple[Any, float | None]:
    """Compile with the fastest error probability per lookup whose simulation keeps the guard.

    Tries :data:`~fheqnn.compiler.options.P_ERROR_CANDIDATES`, largest first, then Concrete's
    default. Each candidate's simulated calibration rows (the approximate rounding's randomness
    and the bootstrap errors included; mean of :data:`P_ERROR_GUARD_PASSES` simulations) are
    scored against the unrounded program by the same guard as the rounding, until one keeps
    it. A larger error probability is not always faster nor smaller: Concrete's optimizer may
    answer it with parameters that its cost model ranks cheaper and this CPU runs slower
    (measured on breast cancer: 1e-2 chose 512-coefficient polynomials of GLWE dimension 4 and
    ran 1.45 x slower than 1e-3's 1024 / 2), or with larger keys (561 MB of expanded keys at
    1e-2 against 282 MB at 1e-3 for one breast cancer model). So the smaller candidates, which
    keep the guard at least as well (fewer bootstrap errors), are compiled too, and when their
    parameters differ, every such candidate is timed (keys made, one encrypted call) and the
    fastest wins; among those within 10 % of it (timing noise), the one with the smallest keys
    (key generation time and the upload follow it; every contender kept the guard), then the
    smallest error probability. Candidates whose keys would exceed
    :data:`P_ERROR_TIMING_MAX_KEY_BYTES` are not timed: when fewer than two are left to time,
    the one with the smallest keys wins. ``curve`` receives one entry per candidate (p_error,
    PBS, estimated evaluation key bytes, simulated agreement and score, measured seconds per
    call when timed).
    """
    return _PErrorSearch(lowered, inputset, curve).run()


class _PErrorSearch:
    """One run of :func:`choose_p_error`; ``curve`` gets an entry per compiled candidate."""

    def __init__(
        self, lowered: Lowered, inputset: list[np.ndarray], curve: list[dict[str, Any]]
    ) -> None:
        self.lowered, self.inputset, self.curve = lowered, inputset, curve
        self.q = lowered.calibration_q[:P_ERROR_GUARD_ROWS]
        self.batch_size = lowered.contract.batch_size

    def compiled(self, p_error: float | None) -> tuple[Any, dict[str, Any]]:
        """The circuit compiled at ``p_error``, and its entry on the curve."""
        options = self.lowered.options.concrete_options(p_error)
        configuration = backend.make_configuration(**options)
        circuit = backend.compile_circuit(self.lowered.program, self.inputset, configuration)
        entry: dict[str, Any] = {
            "p_error": p_error,
            "pbs": int(circuit.programmable_bootstrap_count) // self.batch_size,
            "evaluation_keys_bytes_estimate": key_bytes_estimate(circuit.statistics),
        }
        self.curve.append(entry)
        return circuit, entry

    def keeps_guard(self, circuit: Any, entry: dict[str, Any]) -> bool:
        """Whether the simulated circuit keeps the guard (recorded in ``entry``)."""
        guard = self.lowered.guard
        assert guard is not None
        circuit.enable_fhe_simulation()
        measured = _simulated_score(circuit, self.lowered, self.q)
        entry.update(
            simulated_agreement=measured.agreement,
            simulated_score=measured.score,
            simulated_boundary_agreement=measured.boundary_agreement,
        )
        ok = guard.passes(measured, len(self.q), slack_rows=P_ERROR_SLACK_ROWS)
        logger.info(
            "p_error %g: simulated %s -> %s", entry["p_error"], measured, "kept" if ok else "no"
        )
        return ok

    def run(self) -> tuple[Any, float | None]:
        from .options import P_ERROR_CANDIDATES

        chosen_at = 0
        for position, p_error in enumerate((*P_ERROR_CANDIDATES, None)):
            circuit, entry = self.compiled(p_error)
            if p_error is None or self.lowered.guard is None:
                return circuit, p_error
            if self.keeps_guard(circuit, entry):
                chosen_at = position
                break
        # The first candidate that keeps the guard, and the smaller ones with other parameters.
        contenders = [(circuit, entry)]
        seen = {_parameters(circuit)}
        for smaller in P_ERROR_CANDIDATES[chosen_at + 1 :]:
            other, other_entry = self.compiled(smaller)
            if _parameters(other) in seen:
                other_entry["same_parameters_as_larger"] = True
                continue
            seen.add(_parameters(other))
            contenders.append((other, other_entry))
        return self.fastest(contenders)

    def fastest(self, contenders: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, float | None]:
        """The fastest contender within timing noise, by the rule of :func:`choose_p_error`."""
        timeable = [
            item
            for item in contenders
            if item[1]["evaluation_keys_bytes_estimate"] <= P_ERROR_TIMING_MAX_KEY_BYTES
        ]
        if len(timeable) < 2:
            best, best_entry = min(
                contenders, key=lambda item: item[1]["evaluation_keys_bytes_estimate"]
            )
            return best, best_entry["p_error"]
        contract = self.lowered.contract
        chunk = contract.chunks(self.lowered.calibration_q[: self.batch_size])[0]
        for candidate, candidate_entry in timeable:
            candidate_entry["seconds_per_call"] = _seconds_per_call(candidate, chunk)
        fastest = min(entry["seconds_per_call"] for _, entry in timeable)
        # Within timing noise of the fastest, the smallest keys, then the smallest error
        # probability.
        close = [item for item in timeable if item[1]["seconds_per_call"] <= 1.1 * fastest]
        best, best_entry = min(
            close,
            key=lambda item: (item[1]["evaluation_keys_bytes_estimate"], item[1]["p_error"]),
        )
        logger.info(
            "p_error: %s",
            ", ".join(f"{e['p_error']:g}: {e['seconds_per_call']:.3f} s" for _, e in timeable),
        )
        return best, best_entry["p_error"]
