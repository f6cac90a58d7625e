"""The rounding search: the cheapest lookup precision per hidden layer (and exact or
approximate rounding) that keeps the accuracy guard."""

from __future__ import annotations

from dataclasses import dataclass

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

    def apply(self, program: Program) -> Program:
        """``program`` with this rounding (bits, exactness and grid offsets)."""
        return program.with_rounding(self.lsbs, self.exact, self.grid_offsets)


def _closeness(score: GuardScore) -> tuple[float, float]:
    """How close a score is to the unrounded program: boundary agreement first (classifiers),
    then agreement."""
    near = score.agreement if score.boundary_agreement is None else score.boundary_agreement
    return (near, score.agreement)


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
    calibration rows, the choice falls back to lossless exact rounding (bit-identical to the
    unrounded program) and says why.

    With ``target_bits``: every lookup input gets that precision (or its full width when
    narrower), approximate unless ``exact`` is true; the guard is only measured.

    With ``align``, the chosen rounding's grids are then moved per neuron
    (:func:`align_rounding_grid`) and scored out of fold; the moved grids are kept when they
    pass the guard, else the unmoved ones (see ``measure`` below). The precision is the one
    chosen without moving grids; with ``target_bits`` moved grids are always kept.
    """
    guard = guard or AccuracyGuard(program, calibration_q, min_agreement=min_agreement)
    hidden = [layer for layer in program.layers if layer.is_hidden]
    if not hidden:
        return RoundingChoice([], [], 1.0, True, guard.reference_score, guard.reference_score)
    widths = [layer.proven_range().bits for layer in hidden]

    def lossless_for(mode: bool) -> list[int]:
        return [capped_lsbs(layer, lossless_round_lsbs(layer), mode) for layer in hidden]

    lossless = lossless_for(True)
    # Grids are fitted on the calibration rows; scoring them on the same rows would flatter
    # them (measured: the guard then accepted lower precisions that lost held-out accuracy).
    # So each half of the rows is scored with grids fitted on the other half (cross-fitting),
    # and the grids kept are fitted on every row. Out of fold, grids fitted on half the rows
    # can score below the unmoved grid, hence the fallback in ``measure``.
    halves: list[np.ndarray] = []
    accumulators: dict[int, list[np.ndarray]] = {}
    if align:
        order = np.random.default_rng(0).permutation(len(calibration_q))
        halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
        every = program.hidden_accumulators(calibration_q)
        accumulators = {-1: every} | {
            k: [acc[rows] for acc in every] for k, rows in enumerate(halves)
        }
    offsets: dict[tuple[int, int, int, bool], np.ndarray] = {}

    def grid(lsbs: list[int], mode: bool, part: int = -1) -> list[np.ndarray] | None:
        if not accumulators:
            return None
        for i, r in enumerate(lsbs):
            if (part, i, r, mode) not in offsets:
                offsets[part, i, r, mode] = align_rounding_grid(
                    hidden[i], accumulators[part][i], r, mode
                )
        return [offsets[part, i, r, mode] for i, r in enumerate(lsbs)]

    unmoved_scores: dict[tuple[bool, tuple[int, ...]], GuardScore] = {}

    def unmoved_score(lsbs: list[int], mode: bool) -> GuardScore:
        key = (mode, tuple(lsbs))
        if key not in unmoved_scores:
            unmoved_scores[key] = guard.score(program.with_rounding(lsbs, mode))
        return unmoved_scores[key]

    def measure(lsbs: list[int], mode: bool) -> tuple[GuardScore, list[np.ndarray] | None]:
        """The guard's score of a rounding, and the grid offsets it keeps (``None``: unmoved).

        With alignment the moved grids are scored out of fold (each half of the rows by grids
        fitted on the other half: a pessimistic estimate, since the grids kept are fitted on
        every row) and kept when they pass or the precision is explicit; otherwise the unmoved
        grid (nothing fitted, so its score on these rows is fair) is kept when it passes or
        scores better.
        """
        outcome: tuple[GuardScore, list[np.ndarray] | None] = (unmoved_score(lsbs, mode), None)
        if accumulators:
            parts = [
                (program.with_rounding(lsbs, mode, grid(lsbs, mode, 1 - k)), rows)
                for k, rows in enumerate(halves)
            ]
            moved = guard.score(program.with_rounding(lsbs, mode, grid(lsbs, mode)), parts)
            plain = outcome[0]
            # An explicit precision is not chosen on these rows: moved grids are kept (on
            # held-out rows they were better at 3 bits on every model tried).
            if (
                target_bits is not None
                or guard.passes(moved)
                or (not guard.passes(plain) and _closeness(moved) >= _closeness(plain))
            ):
                outcome = (moved, grid(lsbs, mode))
        return outcome

    def result(lsbs: list[int], mode: bool, fallback: str | None = None) -> RoundingChoice:
        score, offsets_kept = measure(lsbs, mode)
        candidate = program.with_rounding(lsbs, mode, offsets_kept)
        return RoundingChoice(
            list(lsbs),
            lossless,
            score.agreement,
            mode,
            score.score,
            guard.reference_score,
            estimated_cost_s(candidate),
            fallback,
            guard.passes(score),
            score.boundary_agreement,
            offsets_kept,
        )

    if target_bits is not None:
        mode = bool(exact)
        lsbs = [
            capped_lsbs(layer, max(0, w - target_bits), mode)
            for layer, w in zip(hidden, widths, strict=True)
        ]
        return result(lsbs, mode)

    n_rows = len(calibration_q)
    if n_rows < MIN_GUARD_ROWS:
        return result(
            lossless,
            True,
            f"{n_rows} calibration rows cannot guard a lossy rounding (at least "
            f"{MIN_GUARD_ROWS} needed): kept lossless exact rounding",
        )

    cache: dict[tuple[bool, tuple[int, ...]], tuple[bool, float]] = {}

    def evaluate(lsbs: list[int], mode: bool) -> tuple[bool, float]:
        key = (mode, tuple(lsbs))
        if key not in cache:
            # The search judges unmoved grids; the choice then moves them if that keeps the
            # guard (``result``). Letting moved grids reach lower precisions was measured end
            # to end: on breast cancer a 3-bit layer then kept the guard under rounding but not
            # under bootstrap errors, and p_error="auto" fell back to Concrete's default
            # (larger keys, slower), so moved grids only improve a precision chosen without them.
            cost = estimated_cost_s(program.with_rounding(lsbs, mode))
            cache[key] = (guard.passes(unmoved_score(lsbs, mode)), cost)
        return cache[key]

    def search(mode: bool) -> list[int] | None:
        start = lossless_for(mode)
        candidates = [start]
        for target in range(max(widths) - 1, 0, -1):
            candidates.append(
                [
                    capped_lsbs(layer, max(r, w - target), mode)
                    for layer, w, r in zip(hidden, widths, start, strict=True)
                ]
            )
        passing = [c for c in candidates if evaluate(c, mode)[0]]
        if not passing:
            return None
        best = min(passing, key=lambda c: evaluate(c, mode)[1])
        # Per layer: some layers tolerate coarser lookups than others.
        for i in range(len(hidden)):
            while best[i] < widths[i] - 1:
                trial = list(best)
                trial[i] = capped_lsbs(hidden[i], best[i] + 1, mode)
                if trial[i] <= best[i]:
                    break
                ok, cost = evaluate(trial, mode)
                if not ok or cost >= evaluate(best, mode)[1]:
                    break
                best = trial
        return best

    found = []
    for mode in (False, True) if exact is None else (bool(exact),):
        best = search(mode)
        if best is not None:
            found.append((evaluate(best, mode)[1], best, mode))
    if not found:
        return result(
            lossless,
            True,
            "no lossy rounding keeps the accuracy guard on the calibration rows: kept "
            "lossless exact rounding",
        )
    _, best, mode = min(found, key=lambda item: item[0])
    return result(best, mode)
