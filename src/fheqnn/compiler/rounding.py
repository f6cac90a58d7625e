"""Rounding of accumulators and the circuit's randomness, as the IR interprets them.

Exact rounding (:func:`round_lsbs`) is what Concrete's exact ``round_bit_pattern`` computes;
:class:`CircuitNoise` draws what the encrypted circuit may do instead (approximate rounding's
off-by-one steps, bootstrap errors), for the accuracy guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def round_lsbs(acc: np.ndarray, lsbs: int) -> np.ndarray:
    """Round integers to the nearest multiple of ``2**lsbs``, ties upward.

    This is the arithmetic of Concrete's exact ``round_bit_pattern``: add half a step, clear the
    low bits.
    """
    if lsbs <= 0:
        return acc
    acc = np.asarray(acc, dtype=np.int64)
    return ((acc + (1 << (lsbs - 1))) >> lsbs) << lsbs


#: Spread of Concrete's approximate rounding, as a fraction of the rounding step, when no error
#: probability is known: it rounds ``acc + e`` to the nearest step, ``e`` about normal with this
#: standard deviation. The spread grows with the error probability per lookup; the compiler
#: takes it from the measured table (``fheqnn.compiler.noise``) through :class:`CircuitNoise`.
APPROX_ROUNDING_SPREAD = 0.1

_STANDARD_NORMAL = NormalDist()


def round_lsbs_approx(
    acc: np.ndarray,
    lsbs: int,
    rng: np.random.Generator,
    spread: float = APPROX_ROUNDING_SPREAD,
) -> np.ndarray:
    """A random draw of Concrete's approximate rounding (``spread``: the noise's standard
    deviation, as a fraction of the step; see :data:`APPROX_ROUNDING_SPREAD`).

    Values near the middle of a step may land one step up or down, as in the encrypted run;
    the compiler's accuracy guard runs several draws of it.
    """
    if lsbs <= 0:
        return acc
    acc = np.asarray(acc, dtype=np.int64)
    noise = rng.normal(0.0, spread * (1 << lsbs), size=acc.shape)
    step = float(1 << lsbs)
    return (np.floor((acc + noise) / step + 0.5) * step).astype(np.int64)


@dataclass(frozen=True)
class CircuitNoise:
    """A model of the encrypted circuit's randomness: one draw per call of
    :meth:`Program.run_integer`, from ``rng``.

    Attributes:
        rng: the generator of the draws (seeded by the caller: the draws are reproducible).
        approx_spread: standard deviation of approximate rounding's noise, as a fraction of
            the rounding step (:func:`round_lsbs_approx`).
        lookup_error: probability that a lookup reads another entry of its table than the
            right one (a bootstrap error, which Concrete bounds per lookup by the error
            probability it compiled for): up or down, each half the time, by one step or more
            (:func:`bootstrap_error_steps`).
    """

    rng: np.random.Generator
    approx_spread: float = APPROX_ROUNDING_SPREAD
    lookup_error: float = 0.0

    def round(
        self, acc: np.ndarray, lsbs: int, exact: bool, table: tuple[int, int] | None = None
    ) -> np.ndarray:
        """``acc`` rounded ``lsbs`` bits, then moved by a bootstrap error where one is drawn.

        ``table``: ``(shift, bits)`` of the lookup the result indexes, whose input is
        ``(acc + shift) >> lsbs`` in ``[0, 2**bits)``: an error that leaves that range wraps
        around to the table's other end, as Concrete's simulation showed (0.7 % of uniformly
        spread 6-bit lookups at 0.5, 6.5 % of 3-bit ones; ``benchmarks/bootstrap_error.py``).
        ``None``: no wrapping."""
        if exact or lsbs <= 0:
            rounded = round_lsbs(acc, lsbs)
        else:
            rounded = round_lsbs_approx(acc, lsbs, self.rng, self.approx_spread)
        if self.lookup_error <= 0:
            return rounded
        # Exact rounding clears the bits with one more bootstrap per bit, each of which may
        # err too: a neuron then errs about (1 + lsbs) times as often.
        bootstraps = 1 + (lsbs if exact and lsbs > 0 else 0)
        chance = 1.0 - (1.0 - self.lookup_error) ** bootstraps
        # One uniform draw per lookup: below chance / 2 down, below chance up; where it fell
        # inside its half sets how many steps (bootstrap_error_steps).
        u = self.rng.random(rounded.shape)
        hit = u < chance
        if not hit.any():
            return rounded
        step = 1 << max(lsbs, 0)
        half = chance / 2
        steps = bootstrap_error_steps(np.where(u < half, u, u - half) / half, chance)
        moved = rounded + np.where(hit, np.where(u < half, -step, step) * steps, 0)
        if table is None:
            return moved
        shift, bits = table
        index = (moved + shift) // step
        return np.where(hit, (index % (1 << bits)) * step - shift, moved)


def bootstrap_error_steps(position: np.ndarray, chance: float) -> np.ndarray:
    """How many table steps a bootstrap error moves a lookup, by ``position`` (uniform in
    [0, 1), the draw's place within its half of the error probability ``chance``).

    Concrete's bootstrap noise is normal: a lookup errs when it exceeds half a step, with the
    circuit's error probability. That fixes the noise's standard deviation (0.30 step at 0.1,
    0.74 at 0.5) and so how often an error is two steps or more: never below an error
    probability of ~1e-2, 4 % of the lookups at 0.5. Concrete's simulation of a 7-bit identity
    lookup (256 x 40 lookups per error probability, ``benchmarks/bootstrap_error.py``) agreed:
    +-2 steps in 0.04 % of lookups at 0.2, 0.2 % at 0.3, 1.1 % at 0.4 and 4.4 % at 0.5.
    (It also showed errors that wrap around the table, where the noise pushes a value at
    either end of the encoded range past it: :meth:`CircuitNoise.round` draws them with
    ``table``.)
    """
    position = np.asarray(position, dtype=np.float64)
    chance = min(float(chance), 0.99)  # beyond it the noise spans the table anyway
    sigma = 0.5 / _STANDARD_NORMAL.inv_cdf(1.0 - chance / 2)
    steps = np.ones(position.shape, dtype=np.int64)
    # Given an error (|noise| > 0.5 step), it is m steps or more with odds
    # P(|noise| > m - 0.5) / P(|noise| > 0.5).
    m = 2
    while True:
        odds = (1.0 - _STANDARD_NORMAL.cdf((m - 0.5) / sigma)) / (chance / 2)
        if odds < 1e-12:
            return steps
        steps += position < odds
        m += 1
