"""The rounding search: the cheapest lookup precision per hidden layer (and exact or
approximate rounding) that keeps the accuracy guard."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .cost import estimated_cost_s
from .guard import MIN_GUARD_ROWS, AccuracyGuard, GuardScore
from .ir import Program
from .passes import align_rounding_grid, capped_lsbs, lossless_round_lsbs


@dataclass(frozen=True)
class RoundingChoice:
    """Result of :func:`choose_rounding`.

    Attributes:
        lsbs: accumulator bits rounded away before each hidden layer's lookup.
        lossless: the rounding of each hidden layer that never changes a lookup.
        agreement: mean agreement with the unrounded program on the calibration rows.
        exact: whether the chosen rounding is exact (``False``: Concrete's approximate one).
        score: mean calibration accuracy / R2 of the choice (``None`` without labels).
        reference_score: the unrounded program's calibration accuracy / R2.
        estimated_cost_s: estimated seconds per encrypted row (:func:`estimated_cost_s`).
        fallback: why the choice fell back to lossless exact rounding (``None``: it did not).
        guard_ok: whether the choice keeps the guard (agreement, and score when labelled).
        boundary_agreement: mean agreement on the rows closest to the decision boundary
            (``None``: a single output, or no rounding measured).
        grid_offsets: per hidden layer, the per-neuron offsets of its rounding grid
            (:func:`align_rounding_grid`); ``None``: no offsets.
        unstable: share of calibration rows whose predicted class changed between draws of
            the circuit's noise (``None``: a regressor).
    """

    lsbs: list[int]
    lossless: list[int]
    agreement: float
    exact: bool = True
    score: float | None = None
    reference_score: float | None = None
    estimated_cost_s: float | None = None
    fallback: str | None = None
    guard_ok: bool = True
    boundary_agreement: float | None = None
    grid_offsets: list[np.ndarray] | None = None
    unstable: float | None = None

    def apply(self, program: Program) -> Program:
        """``program`` with this rounding (bits, exactness and grid offsets)."""
        return program.with_rounding(self.lsbs, self.exact, self.grid_offsets)


def _closeness(score: GuardScore) -> tuple[float, float]:
    """How close a score is to the unrounded program: boundary agreement first (classifiers),
    then agreement."""
    near = score.agreement if score.boundary_agreement is None else score.boundary_agreement
    return (near, score.agreement)


class RoundingSearch:
    """One rounding search over a program and its calibration rows (see :func:`choose_rounding`).

    It keeps three caches, all keyed by (exactness, bits per hidden layer): the guard's score of
    the unmoved grids, the search's verdict and estimated cost, and the fitted grid offsets.
    """

    def __init__(
        self,
        program: Program,
        calibration_q: np.ndarray,
        guard: AccuracyGuard,
        *,
        target_bits: int | None,
        align: bool,
    ) -> None:
        self.program = program
        self.n_rows = len(calibration_q)
        self.guard = guard
        self.target_bits = target_bits
        self.hidden = [layer for layer in program.layers if layer.is_hidden]
        self.widths = [layer.proven_range().bits for layer in self.hidden]
        self.lossless = self.lossless_for(True)
        # Grids are fitted on the calibration rows; scoring them on the same rows would flatter
        # them (measured: the guard then accepted lower precisions that lost held-out accuracy).
        # So each half of the rows is scored with grids fitted on the other half (cross-fitting),
        # and the grids kept are fitted on every row. Out of fold, grids fitted on half the rows
        # can score below the unmoved grid, hence the fallback in ``measure``.
        self.halves: list[np.ndarray] = []
        self.accumulators: dict[int, list[np.ndarray]] = {}
        if align and self.hidden:
            order = np.random.default_rng(0).permutation(len(calibration_q))
            self.halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
            every = program.hidden_accumulators(calibration_q)
            self.accumulators = {-1: every} | {
                k: [acc[rows] for acc in every] for k, rows in enumerate(self.halves)
            }
        self._offsets: dict[tuple[int, int, int, bool], np.ndarray] = {}
        self._unmoved: dict[tuple[bool, tuple[int, ...]], GuardScore] = {}
        self._verdicts: dict[tuple[bool, tuple[int, ...]], tuple[bool, float]] = {}

    def lossless_for(self, mode: bool) -> list[int]:
        """Per hidden layer, the most bits that can be rounded away without changing a lookup."""
        return [capped_lsbs(layer, lossless_round_lsbs(layer), mode) for layer in self.hidden]

    def grid(self, lsbs: list[int], mode: bool, part: int = -1) -> list[np.ndarray] | None:
        """Grid offsets fitted on the rows of ``part`` (-1: every row; ``None``: no alignment)."""
        if not self.accumulators:
            return None
        for i, r in enumerate(lsbs):
            if (part, i, r, mode) not in self._offsets:
                self._offsets[part, i, r, mode] = align_rounding_grid(
                    self.hidden[i], self.accumulators[part][i], r, mode
                )
        return [self._offsets[part, i, r, mode] for i, r in enumerate(lsbs)]

    def unmoved_score(self, lsbs: list[int], mode: bool) -> GuardScore:
        key = (mode, tuple(lsbs))
        if key not in self._unmoved:
            self._unmoved[key] = self.guard.score(self.program.with_rounding(lsbs, mode))
        return self._unmoved[key]

    def measure(self, lsbs: list[int], mode: bool) -> tuple[GuardScore, list[np.ndarray] | None]:
        """The guard's score of a rounding, and the grid offsets it keeps (``None``: unmoved).

        With alignment the moved grids are scored out of fold (each half of the rows by grids
        fitted on the other half: a pessimistic estimate, since the grids kept are fitted on
        every row) and kept when they pass or the precision is explicit; otherwise the unmoved
        grid (nothing fitted, so its score on these rows is fair) is kept when it passes or
        scores better.
        """
        outcome: tuple[GuardScore, list[np.ndarray] | None] = (self.unmoved_score(lsbs, mode), None)
        if self.accumulators:
            program, guard = self.program, self.guard
            parts = [
                (program.with_rounding(lsbs, mode, self.grid(lsbs, mode, 1 - k)), rows)
                for k, rows in enumerate(self.halves)
            ]
            offsets = self.grid(lsbs, mode)
            if offsets is not None and not any(np.any(o) for o in offsets):
                return outcome  # nothing moved: the unmoved program, already scored
            kept = program.with_rounding(lsbs, mode, offsets)
            moved = guard.score(kept, parts)
            if moved.unstable is not None:
                # Stability is judged on every row with the draws the unmoved grid had (split
                # scoring draws other noise), so that a second roll cannot pass a rounding.
                moved = replace(moved, unstable=guard.score(kept).unstable)
            plain = outcome[0]
            # An explicit precision is not chosen on these rows: moved grids are kept (on
            # held-out rows they were better at 3 bits on every model tried).
            if (
                self.target_bits is not None
                or guard.passes(moved)
                or (not guard.passes(plain) and _closeness(moved) >= _closeness(plain))
            ):
                outcome = (moved, self.grid(lsbs, mode))
        return outcome

    def result(self, lsbs: list[int], mode: bool, fallback: str | None = None) -> RoundingChoice:
        """The choice of ``lsbs`` in ``mode``, measured (and its grids moved when that keeps)."""
        score, offsets_kept = self.measure(lsbs, mode)
        candidate = self.program.with_rounding(lsbs, mode, offsets_kept)
        return RoundingChoice(
            list(lsbs),
            self.lossless,
            score.agreement,
            mode,
            score.score,
            self.guard.reference_score,
            estimated_cost_s(candidate),
            fallback,
            self.guard.passes(score),
            score.boundary_agreement,
            offsets_kept,
            score.unstable,
        )

    def evaluate(self, lsbs: list[int], mode: bool) -> tuple[bool, float]:
        """Whether a rounding keeps the guard (unmoved grids), and its estimated cost."""
        key = (mode, tuple(lsbs))
        if key not in self._verdicts:
            # The search judges unmoved grids; the choice then moves them if that keeps the
            # guard (``result``). Letting moved grids reach lower precisions was measured end
            # to end: on breast cancer a 3-bit layer then kept the guard under rounding but not
            # under bootstrap errors, and p_error="auto" fell back to Concrete's default
            # (larger keys, slower), so moved grids only improve a precision chosen without them.
            candidate = self.program.with_rounding(lsbs, mode)
            cost = estimated_cost_s(candidate)
            score = self._unmoved.get(key) or self.guard.score(candidate, verdict_only=True)
            passes = self.guard.passes(score)
            if passes:  # every draw was made: the full score, which measure() reuses
                self._unmoved.setdefault(key, score)
            self._verdicts[key] = (passes, cost)
        return self._verdicts[key]

    def at_precision(self, target_bits: int, mode: bool) -> RoundingChoice:
        """Every lookup input at ``target_bits`` (or its full width when narrower)."""
        lsbs = [
            capped_lsbs(layer, max(0, w - target_bits), mode)
            for layer, w in zip(self.hidden, self.widths, strict=True)
        ]
        return self.result(lsbs, mode)

    def cheapest(self, mode: bool) -> list[int] | None:
        """The cheapest rounding in ``mode`` that keeps the guard (``None``: none does)."""
        start = self.lossless_for(mode)
        candidates = [start]
        for target in range(max(self.widths) - 1, 0, -1):
            candidates.append(
                [
                    capped_lsbs(layer, max(r, w - target), mode)
                    for layer, w, r in zip(self.hidden, self.widths, start, strict=True)
                ]
            )
        passing = [c for c in candidates if self.evaluate(c, mode)[0]]
        if not passing:
            return None
        best = min(passing, key=lambda c: self.evaluate(c, mode)[1])
        # Per layer: some layers tolerate coarser lookups than others.
        for i in range(len(self.hidden)):
            best = self._lower_one_layer(best, i, mode)
        return best

    def _lower_one_layer(self, best: list[int], i: int, mode: bool) -> list[int]:
        """``best`` with layer ``i`` lowered one bit at a time while that keeps and saves."""
        while best[i] < self.widths[i] - 1:
            trial = list(best)
            trial[i] = capped_lsbs(self.hidden[i], best[i] + 1, mode)
            if trial[i] <= best[i]:
                break
            ok, cost = self.evaluate(trial, mode)
            if not ok or cost >= self.evaluate(best, mode)[1]:
                break
            best = trial
        return best

    def choose(self, exact: bool | None) -> RoundingChoice:
        """The search without a target precision (``exact=None``: both modes compete)."""
        distinct = self.guard.distinct_rows
        if distinct < MIN_GUARD_ROWS:
            return self.result(
                self.lossless,
                True,
                f"{rows_text(self.n_rows, distinct)} cannot guard a lossy rounding (at least "
                f"{MIN_GUARD_ROWS} distinct needed): kept lossless exact rounding",
            )
        found = []
        for mode in (False, True) if exact is None else (bool(exact),):
            best = self.cheapest(mode)
            if best is not None:
                found.append((self.evaluate(best, mode)[1], best, mode))
        if not found:
            return self.result(
                self.lossless,
                True,
                "no lossy rounding keeps the accuracy guard on the calibration rows: kept "
                "lossless exact rounding",
            )
        _, best, mode = min(found, key=lambda item: item[0])
        return self.result(best, mode)


def rows_text(n_rows: int, distinct: int) -> str:
    """How messages count calibration rows: the distinct inputs when some are repeated."""
    if distinct == n_rows:
        return f"{n_rows} calibration rows"
    return f"{n_rows} calibration rows ({distinct} distinct after the model's input quantization)"


def choose_rounding(
    program: Program,
    calibration_q: np.ndarray,
    *,
    target_bits: int | None = None,
    min_agreement: float | None = None,
    exact: bool | None = True,
    guard: AccuracyGuard | None = None,
    align: bool = True,
) -> RoundingChoice:
    """Choose how many accumulator bits each hidden layer rounds away before its lookup.

    Without ``target_bits`` ("auto"): candidates are the lossless rounding, every common lookup
    precision (agreement is not monotonic in the precision, so each is tried), and from the
    cheapest of those each layer alone lowered one bit at a time. Among the candidates that keep
    the guard (mean calibration accuracy within ``max_score_loss`` of the unrounded program's
    when labels are given, else ``min_agreement``; for classifiers also
    ``min_boundary_agreement`` on the rows closest to the decision boundary; over several random
    draws when rounding is approximate), the one of least estimated cost
    (:func:`estimated_cost_s`) wins; with ``exact=None`` both exact and approximate rounding
    compete. When none keeps the guard, or there are fewer than :data:`MIN_GUARD_ROWS`
    distinct calibration rows (different quantized inputs: :func:`~.guard.distinct_rows`),
    the choice falls back to lossless exact rounding (bit-identical to the unrounded program)
    and says why.

    With ``target_bits``: every lookup input gets that precision (or its full width when
    narrower), approximate unless ``exact`` is true; the guard is only measured.

    With ``align``, the chosen rounding's grids are then moved per neuron
    (:func:`align_rounding_grid`) and scored out of fold; the moved grids are kept when they
    pass the guard, else the unmoved ones (see ``measure`` below). The precision is the one
    chosen without moving grids; with ``target_bits`` moved grids are always kept.
    """
    guard = guard or AccuracyGuard(program, calibration_q, min_agreement=min_agreement)
    if not any(layer.is_hidden for layer in program.layers):
        return RoundingChoice([], [], 1.0, True, guard.reference_score, guard.reference_score)
    search = RoundingSearch(program, calibration_q, guard, target_bits=target_bits, align=align)
    if target_bits is not None:
        return search.at_precision(target_bits, bool(exact))
    return search.choose(exact)
