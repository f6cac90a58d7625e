"""The compiler's model of the encrypted circuit's randomness, measured from Concrete.

Two things make an encrypted run differ from the integer interpreter:

- approximate rounding, whose result is one step off near the middle of a step, more often the
  larger the error probability the circuit was compiled for (the spread of its noise is
  measured by ``benchmarks/approx_spread.py`` and committed as ``approx_spread.json`` beside
  this module);
- bootstrap errors: a lookup reads another entry of its table (the neighbouring one, or further
  away at large error probabilities), with at most the error probability per lookup
  (``p_error``, or ``global_p_error`` per circuit run) that Concrete compiled for.

The accuracy guard draws both, from a seeded generator, to judge a candidate's accuracy and
its stability (the share of rows whose prediction changes from one run to the next), so that
the compiler's choices are a function of its inputs, never of a clock or of Concrete's own
unseeded simulation. ``benchmarks/stability.py`` compares what the model predicts with
Concrete's simulation on held-out rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise

import numpy as np

from .rounding import CircuitNoise

#: Draws of the circuit's randomness per candidate when stability is judged: a row is unstable
#: when its prediction is not the same in all of them (the figure the issue tracker asks for is
#: the share of rows that change over 10 runs).
STABILITY_DRAWS = 10

#: Error probability per lookup of Concrete's default configuration, as fheqnn uses it
#: (``p_error=None``): Concrete then bounds the whole circuit's error probability by 1e-5.
CONCRETE_DEFAULT_GLOBAL_P_ERROR = 1e-5

#: Below this error probability per lookup no bootstrap error is drawn at all (calibration sets
#: hold at most ~10**6 lookups).
NEGLIGIBLE_LOOKUP_ERROR = 1e-9


@cache
def _spread_table() -> dict:
    """The committed measurement (``approx_spread.json``), read once."""
    text = resources.files(__package__).joinpath("approx_spread.json").read_text()
    return json.loads(text)["spreads"]


def _measured_spreads() -> tuple[tuple[float, float], ...]:
    """(p_error, spread) pairs of the committed table, by increasing p_error."""
    pairs = [
        (float(key), float(entry["spread"]))
        for key, entry in _spread_table().items()
        if key != "default" and entry.get("spread") is not None
    ]
    return tuple(sorted(pairs))


def approx_spread(p_error: float | None) -> float:
    """The spread of approximate rounding (fraction of a step) at an error probability per
    lookup: the committed measurement, interpolated in log(p_error) between measured points
    and held at the ends; ``None`` is Concrete's default configuration.

    Held above 1e-2, the largest measured point, on evidence: on a tiny network with 1-bit
    approximate rounding, the model's agreement with the interpreter under the held spread
    and its bootstrap errors was 0.927 / 0.905 / 0.830 / 0.762 at p_error 0.05 / 0.1 / 0.3 /
    0.5, against 0.952 / 0.940 / 0.902 / 0.763 in Concrete's simulation (5 runs); a spread
    grown with the circuit's noise gave 0.905 / 0.858 / 0.747 / 0.626, further off.
    """
    if p_error is None:
        return float(_spread_table()["default"]["spread"])
    pairs = _measured_spreads()
    x = math.log10(max(float(p_error), 1e-300))
    points = [(math.log10(p), s) for p, s in pairs]
    if x <= points[0][0]:
        return points[0][1]
    for (x0, s0), (x1, s1) in pairwise(points):
        if x <= x1:
            return s0 + (s1 - s0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def per_lookup_p_error(p_error: float | None, global_p_error: float | None) -> float | None:
    """The error probability per lookup the noise model draws for a circuit compiled for
    ``p_error`` per lookup and ``global_p_error`` per circuit run.

    Concrete keeps both bounds, and a run errs if any of its lookups does, so a lookup errs at
    most ``min(p_error, global_p_error)`` of the time; with ``global_p_error`` alone, at most
    ``global_p_error`` (an over-estimate, as for Concrete's default bound: ``None``, read as
    :data:`CONCRETE_DEFAULT_GLOBAL_P_ERROR` per lookup).
    """
    if global_p_error is None:
        return p_error
    if p_error is None:
        return float(global_p_error)
    return min(float(p_error), float(global_p_error))


@dataclass(frozen=True)
class NoiseSpec:
    """The circuit's randomness at one error probability: what :class:`CircuitNoise` draws.

    Attributes:
        approx_spread: spread of approximate rounding, as a fraction of a step.
        lookup_error: probability per lookup of reading a neighbouring table entry.
    """

    approx_spread: float
    lookup_error: float = 0.0

    @classmethod
    def at(cls, p_error: float | None, global_p_error: float | None = None) -> NoiseSpec:
        """The noise of a circuit compiled for ``p_error`` per lookup and ``global_p_error`` per
        circuit run (see :func:`per_lookup_p_error`).

        A lookup errs with that probability, by one table step or more (the normal noise's
        tail: :func:`fheqnn.compiler.rounding.bootstrap_error_steps`), so the model holds up to the
        largest error probability accepted, 0.5 (a lookup wrong half the time).
        """
        per_lookup = per_lookup_p_error(p_error, global_p_error)
        lookup_error = CONCRETE_DEFAULT_GLOBAL_P_ERROR if per_lookup is None else per_lookup
        if lookup_error < NEGLIGIBLE_LOOKUP_ERROR:
            lookup_error = 0.0  # never drawn in any calibration set: no draws needed
        return cls(approx_spread(per_lookup), lookup_error)

    @property
    def random(self) -> bool:
        """Whether lookups may err (approximate rounding is random whatever this says)."""
        return self.lookup_error > 0

    def draw(self, rng: np.random.Generator) -> CircuitNoise:
        """The noise model of one run, its draws from ``rng``."""
        return CircuitNoise(rng, self.approx_spread, self.lookup_error)
