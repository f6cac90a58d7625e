"""Passes over the integer IR: remove neurons that cost lookups for nothing, choose rounding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr

from ..errors import InvalidModelError
from .ir import Layer, Program, round_lsbs

logger = logging.getLogger(__name__)


def _keep_neurons(layer: Layer, keep: np.ndarray) -> Layer:
    """``layer`` restricted to the neurons (rows) in ``keep``."""
    width = layer.n_outputs
    return replace(
        layer,
        weight=layer.weight[keep],
        offset=layer.offset[keep],
        acc_scale=layer.acc_scale[keep],
        bias=layer.bias[keep],
        grid_offset=layer.grid_offset[keep],
        activation=None if layer.activation is None else layer.activation.select(keep, width),
        output_quantizer=None
        if layer.output_quantizer is None
        else layer.output_quantizer.select(keep),
    )


def drop_dead_neurons(program: Program) -> tuple[Program, int]:
    """Remove hidden neurons whose lookup would be wasted; the outputs stay bit-identical.

    * A neuron with no non-zero incoming weight outputs a constant: its value is folded into the
      next layer's offsets and the neuron is removed.
    * A neuron that no next-layer weight reads is removed.

    Repeats until nothing changes. Returns the new program and the number of neurons removed.
    """
    layers = list(program.layers)
    removed = 0
    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            layer, nxt = layers[i], layers[i + 1]
            constant = ~(layer.weight != 0).any(axis=1)
            unread = ~(nxt.weight != 0).any(axis=0)
            drop = constant | unread
            if not drop.any() or drop.all():
                # Keep at least one neuron so the program keeps its shape.
                continue
            keep = ~drop
            # Constant neurons: their lookup of a zero accumulator, times the next weights.
            const_index = np.nonzero(constant & ~unread)[0]
            offset = nxt.offset.copy()
            if const_index.size:
                zero_acc = np.zeros((1, layer.n_outputs), dtype=np.int64)
                values = layer.round_and_lookup(zero_acc)[0]
                offset = offset + nxt.weight[:, const_index] @ values[const_index]
            layers[i] = _keep_neurons(layer, keep)
            layers[i + 1] = replace(nxt, weight=nxt.weight[:, keep], offset=offset)
            removed += int(drop.sum())
            changed = True
    if removed:
        logger.info("removed %d dead hidden neurons", removed)
    return replace(program, layers=tuple(layers)), removed


def _every_accumulator(layer: Layer) -> np.ndarray | None:
    """All accumulator values of each neuron's proven interval, shape (values, n_out), or None
    when that is too many to enumerate (more than 2**20 per neuron)."""
    lo, hi = layer.neuron_ranges()
    span = int((hi - lo).max(initial=0))
    if span > 2**20:
        return None
    acc = lo[:, None] + np.arange(span + 1)[None, :]
    return np.minimum(acc, hi[:, None]).T


def check_lookup_domains(program: Program) -> None:
    """Refuse activation chains that give NaN on a reachable accumulator (e.g. Log, Sqrt of a
    negative value): their table would hold garbage."""
    for layer in program.layers:
        if not layer.is_hidden or layer.activation is None:
            continue
        acc = _every_accumulator(layer)
        if acc is None:
            continue
        with np.errstate(all="ignore"):
            values = layer.activate(layer.pre_activation(acc))
        if np.isnan(values).any():
            raise InvalidModelError(
                f"layer {layer.name!r}: its activation ({layer.activation.describe()}) gives NaN "
                "for some reachable accumulator values, so it cannot become a table lookup"
            )


def lossless_round_lsbs(layer: Layer, max_lsbs: int | None = None) -> int:
    """Largest number of low accumulator bits whose rounding never changes this layer's lookup.

    Checked exhaustively over every accumulator value of each neuron's proven interval, so the
    answer holds for every input, not only for calibration data (the exact power-of-two rescale
    case is one instance).
    """
    if not layer.is_hidden:
        return 0
    acc = _every_accumulator(layer)
    if acc is None:
        return 0
    reference = layer.lookup(acc)
    limit = layer.proven_range().bits - 1 if max_lsbs is None else max_lsbs
    best = 0
    for lsbs in range(1, max(limit, 0) + 1):
        if np.array_equal(layer.lookup(round_lsbs(acc, lsbs)), reference):
            best = lsbs
        else:
            break
    return best


def capped_lsbs(layer: Layer, lsbs: int, exact: bool = True) -> int:
    """``lsbs``, lowered until rounding does not widen the circuit beyond the proven width.

    Rounding the largest accumulator up can need one more bit than the accumulator itself; the
    circuit must stay within what was proven (and so within ``n_accum_bits``).
    """
    proven_bits = layer.proven_range().bits
    while lsbs > 0:
        if replace(layer, round_lsbs=lsbs, rounding_exact=exact).circuit_bits() <= proven_bits:
            return lsbs
        lsbs -= 1
    return 0


#: Largest number of grid offsets tried per neuron by :func:`align_rounding_grid` (evenly
#: spaced over one rounding step).
MAX_GRID_OFFSETS = 16
#: Spread (fraction of a step) of approximate rounding as grid alignment models it. Larger
#: than :data:`fheqnn.compiler.ir.APPROX_ROUNDING_SPREAD` (0.1, the guard's model): in
#: Concrete's simulation at p_error 1e-3 (bootstrap errors included), grids aligned with
#: 0.1 lost 0.8 point on breast cancer held-out folds where unmoved ones did not; 0.17 and
#: 0.25 gained on both breast cancer and digits, 0.17 more on digits (accuracy.md, session 4).
ALIGN_ROUNDING_SPREAD = 0.17


def _expected_lookup_change(
    layer: Layer, acc: np.ndarray, lsbs: int, offset: int | np.ndarray, exact: bool
) -> np.ndarray:
    """Per neuron: the expected sum over rows of ``|rounded lookup - unrounded lookup|`` when
    ``lsbs`` bits are rounded on a grid moved by ``offset`` (one for all, or one per neuron).

    Each accumulator lands on the cell below or above it: exact rounding picks the nearer (ties
    upward); approximate rounding picks the upper one with the probability of a normal noise
    of :data:`ALIGN_ROUNDING_SPREAD` of a step (the shape of
    :func:`fheqnn.compiler.ir.round_lsbs_approx`, wider).
    """
    step = 1 << lsbs
    moved = acc + offset
    lower = (moved >> lsbs) << lsbs  # floor to the grid (arithmetic shift)
    reference = layer.lookup(acc)
    change_down = np.abs(layer.lookup(lower - offset) - reference)
    change_up = np.abs(layer.lookup(lower + step - offset) - reference)
    distance = (moved - lower) - step / 2  # >= 0: the upper cell is nearer (or a tie)
    if exact:
        up = (distance >= 0).astype(np.float64)
    else:
        up = ndtr(distance / (ALIGN_ROUNDING_SPREAD * step))
    return (up * change_up + (1.0 - up) * change_down).sum(axis=0)


def align_rounding_grid(layer: Layer, acc: np.ndarray, lsbs: int, exact: bool = True) -> np.ndarray:
    """Per-neuron grid offsets that make rounding ``lsbs`` bits change the fewest lookups.

    Rounding maps every accumulator of a cell of ``2**lsbs`` values to one table entry; the
    activation's steps (where the quantized output changes) rarely fall where they would do
    least harm, so accumulators on the wrong side of a step get the neighbouring output. Adding
    a clear per-neuron constant before rounding (and removing it inside the table) slides the
    cells: for each neuron, the grid position is kept whose rounding changes the lookup
    outputs of the calibration accumulators ``acc`` (shape ``(rows, neurons)``) the least in
    expectation (:func:`_expected_lookup_change`, which knows that approximate rounding is
    random near cell edges); ties keep the unmoved grid, so a rounding that changes nothing
    keeps offset 0.

    A position ``g`` in ``[0, 2**lsbs)`` can be reached by the offset ``g`` or ``g - 2**lsbs``
    (the same cells); each neuron takes one that keeps its own proven accumulator interval
    inside the circuit the layer already has (the same shift, no wider than the proven
    width), so the bound on ``n_accum_bits`` and the lookup precision do not change. Free under
    encryption: one clear addition per neuron.
    """
    zero = np.zeros(layer.n_outputs, dtype=np.int64)
    if lsbs <= 0 or not layer.is_hidden or len(acc) == 0:
        return zero
    step = 1 << lsbs
    unmoved = replace(layer, round_lsbs=lsbs, rounding_exact=exact, grid_offset=0)
    shift = unmoved.shift
    limit = (1 << layer.proven_range().bits) - 1  # largest circuit value within the proof
    lo, hi = layer.neuron_ranges()

    def fits(offset: np.ndarray) -> np.ndarray:
        top = round_lsbs(hi + offset + shift, lsbs) + (0 if exact else step)
        return (lo + offset + shift >= 0) & (top <= limit)

    acc = np.asarray(acc, dtype=np.int64)
    stride = max(1, step // MAX_GRID_OFFSETS)
    candidates, changes = [], []
    for g in range(0, step, stride):
        up = np.full(layer.n_outputs, g, dtype=np.int64)
        offset = np.where(fits(up), up, up - step)
        change = _expected_lookup_change(layer, acc, lsbs, offset, exact)
        candidates.append(offset)
        changes.append(np.where(fits(offset), change, np.inf))
    # Ties (within float noise) keep the first candidate: the unmoved grid.
    best = np.argmin(np.round(np.stack(changes), 9), axis=0)
    return np.stack(candidates)[best, np.arange(layer.n_outputs)]


# ----------------------------------------------------------------------------- cost model

#: Seconds per table lookup by lookup input precision (bits): concrete-python 2.11, a large
#: batch of independent lookups on 2 cores (``fheqnn.bench.lookup_floor``), default error
#: probability. Values between the measured points (2, 4, 6, 8 bits) are geometric means.
LOOKUP_COST_S = {1: 0.008, 2: 0.009, 3: 0.0116, 4: 0.015, 5: 0.0315, 6: 0.066, 7: 0.204, 8: 0.63}
#: Fixed seconds per circuit call (encrypted argument handling, key switch set-up).
CALL_COST_S = 0.07
#: Growth of the lookup cost per bit above the table (the polynomial size doubles per bit and
#: more: 6 -> 8 bits measured 9.5 x).
_COST_GROWTH_PER_BIT = 3.1


def lookup_cost_s(bits: int) -> float:
    """Estimated seconds of one table lookup whose input has ``bits`` of precision."""
    bits = max(1, int(bits))
    top = max(LOOKUP_COST_S)
    if bits <= top:
        return LOOKUP_COST_S[bits]
    return LOOKUP_COST_S[top] * _COST_GROWTH_PER_BIT ** (bits - top)


def layer_cost_s(layer: Layer) -> float:
    """Estimated seconds of a hidden layer's lookups per row.

    Exact rounding of ``r`` bits costs about ``r`` extra small lookups per neuron (Concrete
    clears the bits one lookup at a time); approximate rounding costs none (the bootstrap's own
    modulus switch rounds).
    """
    if not layer.is_hidden:
        return 0.0
    cost = lookup_cost_s(layer.lookup_bits())
    if layer.round_lsbs and layer.rounding_exact:
        cost += layer.round_lsbs * lookup_cost_s(2)
    return layer.n_outputs * cost


def estimated_cost_s(program: Program) -> float:
    """Estimated seconds of one encrypted row on 2 cores: fixed call cost plus every lookup."""
    return CALL_COST_S + sum(layer_cost_s(layer) for layer in program.layers)


# ----------------------------------------------------------------------------- rounding choice

#: Draws of the approximate rounding's randomness the guard evaluates (their mean counts).
GUARD_DRAWS = 5
#: Fewer calibration rows than this cannot guard a lossy rounding: one row is several points
#: of agreement. "auto" then keeps lossless exact rounding, and says so.
MIN_GUARD_ROWS = 50
#: Share of the calibration rows, closest to the decision boundary (smallest gap between the
#: unrounded program's two largest outputs), that the boundary criterion looks at; at least
#: :data:`MIN_GUARD_ROWS` of them. The network fits its training rows with wide margins, so
#: agreement over all of them barely sees what rounding does to unseen rows; the rows near the
#: boundary are the ones it flips (measured in ``benchmarks/results/accuracy.md``).
BOUNDARY_FRACTION = 0.1
#: The guard without labels, for classifiers: least share of calibration rows whose class
#: matches the unrounded program's.
CLASSIFIER_MIN_AGREEMENT = 0.99
#: The guard without labels, for regressors: least R2 of the rounded program's outputs against
#: the unrounded program's on the calibration rows (the share of their variance it keeps).
#: Chosen on 5-fold cross-validation of the training parts of diabetes and Friedman #1 (mean
#: of 5 draws): 6-bit lookups keep 0.970-0.981 of the calibration rows' variance and moved
#: held-out R2 by +0.04 / +0.06 points on average (7-bit: -0.9 / -0.3), at a third of 7-bit
#: lookups' estimated cost and a ninth of 8-bit ones'; 5-bit lookups keep 0.947-0.968 and cost
#: Friedman #1 1.4 points on every fold. See ``benchmarks/results/accuracy.md``, session 6.
REGRESSION_MIN_AGREEMENT = 0.97


@dataclass(frozen=True)
class GuardScore:
    """How a candidate program does on the calibration rows (mean of the random draws).

    Attributes:
        agreement: share of rows whose prediction matches the unrounded program's.
        score: accuracy (classifier) or R2 (regressor) against the calibration labels; ``None``
            without labels.
        boundary_agreement: agreement on the rows closest to the decision boundary
            (:data:`BOUNDARY_FRACTION`); ``None`` for a single output.
    """

    agreement: float
    score: float | None = None
    boundary_agreement: float | None = None

    @staticmethod
    def mean(scores: list[GuardScore]) -> GuardScore:
        """The mean of several scores of the same rows (random draws or simulations)."""

        def mean_of(name: str) -> float | None:
            values = [getattr(score, name) for score in scores]
            return None if values[0] is None else float(np.mean(values))

        return GuardScore(mean_of("agreement"), mean_of("score"), mean_of("boundary_agreement"))


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


def boundary_rows(
    outputs: np.ndarray, n_rows: int | None = None, *, classifier: bool = True
) -> np.ndarray | None:
    """Indices of the rows (among the first ``n_rows``) closest to the decision boundary.

    The :data:`BOUNDARY_FRACTION` of rows (at least :data:`MIN_GUARD_ROWS`, at most all) with
    the smallest gap between the two largest outputs; ``None`` for a single output or a
    regressor (no decision boundary).
    """
    if not classifier or outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    outputs = outputs if n_rows is None else outputs[:n_rows]
    top2 = np.sort(outputs, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    count = min(len(gap), max(MIN_GUARD_ROWS, int(np.ceil(BOUNDARY_FRACTION * len(gap)))))
    return np.argsort(gap, kind="stable")[:count]


def _agreement(reference: np.ndarray, candidate: np.ndarray, classifier: bool = True) -> float:
    """How closely ``candidate`` outputs follow ``reference`` ones, in [0, 1] (1: the same).

    A classifier with several outputs: the share of rows with the same argmax. Otherwise
    (regressors, single outputs): the R2 of the candidate against the reference, averaged over
    outputs and floored at 0: the share of the reference outputs' variance the candidate
    keeps. (Until session 6 this was the share of rows within 0.05 standard deviation of the
    reference, which no rounding below 8 bits kept on a trained regressor.)
    """
    if classifier and reference.shape[1] > 1:
        return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    error = ((np.asarray(candidate, dtype=np.float64) - reference) ** 2).mean(axis=0)
    variance = np.asarray(reference, dtype=np.float64).var(axis=0)
    per_output = np.where(variance > 0, 1.0 - error / np.where(variance > 0, variance, 1.0), 0.0)
    # A constant reference is kept only by the same constant.
    per_output = np.where((variance == 0) & (error == 0), 1.0, per_output)
    return float(np.clip(per_output, 0.0, 1.0).mean())


def calibration_score(predictions: np.ndarray, labels: np.ndarray, classifier: bool) -> float:
    """Accuracy (classifier) or R2 (regressor) of predictions against labels."""
    if classifier:
        return float(np.mean(np.asarray(predictions).reshape(len(labels)) == labels))
    pred = np.asarray(predictions, dtype=np.float64).reshape(len(labels), -1)
    truth = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    total = float(((truth - truth.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((truth - pred) ** 2).sum()) / (total or 1.0)


class AccuracyGuard:
    """Scores candidate roundings of a program on calibration rows.

    Args:
        program: the unrounded program (the reference).
        calibration_q: quantized calibration rows (n_rows, n_features).
        postprocess: float outputs to predictions (the client contract's), used with labels.
        labels: calibration labels (n_rows,) or ``None``.
        classifier: whether the labels are classes (accuracy) or values (R2).
        min_agreement: least agreement with the unrounded program, in [0, 1] (see
            :func:`_agreement`); ``None``: :data:`CLASSIFIER_MIN_AGREEMENT` for classifiers
            with several outputs, else :data:`REGRESSION_MIN_AGREEMENT`.
        min_boundary_agreement: least agreement on the rows closest to the decision boundary
            (:func:`boundary_rows`), in [0, 1]; classifiers (several outputs) only.
        max_score_loss: most accuracy / R2 a choice may lose against the reference (0.005 is
            half a point of accuracy).
        draws: random draws of approximate rounding scored per candidate (the mean counts).
        seed: seed of those draws (the choice is reproducible).
    """

    def __init__(
        self,
        program: Program,
        calibration_q: np.ndarray,
        *,
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        labels: np.ndarray | None = None,
        classifier: bool = True,
        min_agreement: float | None = None,
        min_boundary_agreement: float = 0.98,
        max_score_loss: float = 0.005,
        draws: int = GUARD_DRAWS,
        seed: int = 0,
    ) -> None:
        self.program = program
        self.calibration_q = calibration_q
        self.postprocess = postprocess or (lambda outputs: outputs)
        self.labels = None if labels is None else np.asarray(labels)
        self.classifier = classifier
        self.min_boundary_agreement = min_boundary_agreement
        self.max_score_loss = max_score_loss
        self.draws = max(1, int(draws))
        self.seed = seed
        self.reference = program.dequantize_output(program.run_integer(calibration_q))
        by_class = classifier and self.reference.shape[1] > 1
        if min_agreement is None:
            min_agreement = CLASSIFIER_MIN_AGREEMENT if by_class else REGRESSION_MIN_AGREEMENT
        self.min_agreement = float(min_agreement)
        self.reference_score = self._score(self.reference)
        self.boundary = boundary_rows(self.reference, classifier=classifier)

    def _boundary_of(self, n_rows: int) -> np.ndarray | None:
        """The boundary rows among the first ``n_rows`` calibration rows."""
        return (
            self.boundary
            if n_rows == len(self.reference)
            else boundary_rows(self.reference, n_rows, classifier=self.classifier)
        )

    def _boundary_agreement(self, outputs: np.ndarray) -> float | None:
        """Agreement on the boundary rows among the first ``len(outputs)`` calibration rows."""
        rows = self._boundary_of(len(outputs))
        if rows is None or len(rows) == 0:
            return None
        return _agreement(self.reference[rows], outputs[rows], self.classifier)

    def _score(self, outputs: np.ndarray) -> float | None:
        if self.labels is None:
            return None
        return calibration_score(self.postprocess(outputs), self.labels, self.classifier)

    def score(
        self, candidate: Program, parts: list[tuple[Program, np.ndarray]] | None = None
    ) -> GuardScore:
        """Mean agreement and mean score of ``candidate`` over the draws (its expectation:
        approximate rounding is random in every run).

        ``parts``: score a candidate fitted to the calibration rows out of fold instead; each
        ``(variant, rows)`` pair gives the outputs of those rows (indices) by a variant fitted
        without them (see :func:`choose_rounding`).
        """
        random_rounding = any(
            layer.round_lsbs and not layer.rounding_exact for layer in candidate.layers
        )
        parts = parts or [(candidate, np.arange(len(self.calibration_q)))]
        rng = np.random.default_rng(self.seed)
        draws = []
        for _ in range(self.draws if random_rounding else 1):
            outputs = np.empty_like(self.reference)
            for variant, rows in parts:
                acc = variant.run_integer(
                    self.calibration_q[rows], rng if random_rounding else None
                )
                outputs[rows] = variant.dequantize_output(acc)
            draws.append(self.score_outputs(outputs))
        return GuardScore.mean(draws)

    def score_outputs(self, outputs: np.ndarray) -> GuardScore:
        """Agreement and score of float outputs of the first ``len(outputs)`` calibration rows
        (e.g. the simulated circuit's)."""
        n = len(outputs)
        agreement = _agreement(self.reference[:n], outputs, self.classifier)
        near = self._boundary_agreement(outputs)
        if self.labels is None:
            return GuardScore(agreement, None, near)
        predictions = self.postprocess(outputs)
        return GuardScore(
            agreement, calibration_score(predictions, self.labels[:n], self.classifier), near
        )

    def reference_score_of(self, n_rows: int) -> float | None:
        """The unrounded program's score on the first ``n_rows`` calibration rows."""
        if self.labels is None:
            return None
        return calibration_score(
            self.postprocess(self.reference[:n_rows]), self.labels[:n_rows], self.classifier
        )

    def passes(self, result: GuardScore, n_rows: int | None = None, slack_rows: int = 0) -> bool:
        """Whether a score keeps the guard: the score when labelled, else the agreement; and,
        for classifiers, the agreement on the rows closest to the decision boundary.

        ``n_rows``: the score is of the first ``n_rows`` calibration rows (default: all).
        ``slack_rows``: each criterion allows this many more rows lost (of the boundary rows
        for the boundary criterion) than its threshold does; for a regressor's agreement (an
        R2, not a share of rows) the same ``slack_rows / n_rows`` is taken off its threshold.
        """
        rows = len(self.calibration_q) if n_rows is None else n_rows
        if result.boundary_agreement is not None:
            near = self._boundary_of(rows)
            slack = slack_rows / max(1, 0 if near is None else len(near))
            if result.boundary_agreement < self.min_boundary_agreement - slack - 1e-12:
                return False
        reference = self.reference_score if n_rows is None else self.reference_score_of(n_rows)
        if result.score is not None and reference is not None:
            tolerance = self.max_score_loss
            if self.classifier:
                # One calibration row is the finest loss a classifier's accuracy can show: on
                # 112 rows (iris) it is 0.9 point, and half a point would refuse any rounding
                # that flips a single row, whatever it saves (measured: 7-bit lookups, 610 MB
                # of keys). The boundary-row criterion above still has to hold.
                tolerance = max(tolerance, 1.0 / max(1, rows))
            tolerance += slack_rows / max(1, rows)
            return result.score >= reference - tolerance - 1e-12
        return result.agreement >= self.min_agreement - slack_rows / max(1, rows) - 1e-12


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
