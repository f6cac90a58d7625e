"""The accuracy guard: how a candidate program (rounded, or compiled with an error probability)
does on the calibration rows against the unrounded program, and whether that is enough."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .ir import APPROX_ROUNDING_SPREAD, Program
from .noise import STABILITY_DRAWS, NoiseSpec

#: Draws of the approximate rounding's randomness the guard evaluates (their mean counts).
GUARD_DRAWS = 5


#: Fewer distinct calibration rows than this cannot guard a lossy rounding: one row is several
#: points of agreement. "auto" then keeps lossless exact rounding, and says so. Rows count once
#: per distinct quantized input (:func:`distinct_rows`): 50 copies of one row are one row.
MIN_GUARD_ROWS = 50


def distinct_rows(calibration_q: np.ndarray) -> int:
    """How many different inputs the quantized calibration rows hold.

    The guard counts the program's inputs, not the raw rows: the program sees only the
    quantized integers, so rows that quantize alike get the same output from every candidate
    and tell the guard nothing more than one of them (with 3-bit inputs, raw rows that differ
    by less than a quantization step are one input). Counting raw rows would let near-copies
    pass for evidence.
    """
    q = np.asarray(calibration_q)
    if q.ndim != 2 or len(q) == 0:
        return len(q)
    return len(np.unique(q, axis=0))


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
        unstable: share of rows whose predicted class is not the same in every draw of the
            circuit's randomness (0: the same answer every run); ``None`` for regressors.
    """

    agreement: float
    score: float | None = None
    boundary_agreement: float | None = None
    unstable: float | None = None

    @staticmethod
    def mean(scores: list[GuardScore]) -> GuardScore:
        """The mean of several scores of the same rows (random draws or simulations)."""

        def mean_of(name: str) -> float | None:
            values = [getattr(score, name) for score in scores]
            return None if values[0] is None else float(np.mean(values))

        return GuardScore(
            mean_of("agreement"),
            mean_of("score"),
            mean_of("boundary_agreement"),
            mean_of("unstable"),
        )


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
        draws: random draws of the circuit's randomness scored per candidate (the mean
            counts); :data:`~fheqnn.compiler.noise.STABILITY_DRAWS` at least when
            ``max_unstable`` is set.
        seed: seed of those draws (the choice is reproducible).
        noise: the circuit's randomness (approximate rounding's spread, bootstrap errors) at
            the error probability it will be compiled for; default: approximate rounding at
            the spread of Concrete's default configuration, no bootstrap error.
        max_unstable: most share of calibration rows whose predicted class may change between
            draws (classifiers); ``None``: stability is not a criterion.
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
        noise: NoiseSpec | None = None,
        max_unstable: float | None = None,
    ) -> None:
        self.program = program
        self.calibration_q = calibration_q
        self.postprocess = postprocess or (lambda outputs: outputs)
        self.labels = None if labels is None else np.asarray(labels)
        self.classifier = classifier
        self.min_boundary_agreement = min_boundary_agreement
        self.max_score_loss = max_score_loss
        self.max_unstable = max_unstable
        self.draws = max(1, int(draws), STABILITY_DRAWS if max_unstable is not None else 1)
        self.seed = seed
        self.noise = noise if noise is not None else NoiseSpec(APPROX_ROUNDING_SPREAD)
        self.reference = program.dequantize_output(program.run_integer(calibration_q))
        by_class = classifier and self.reference.shape[1] > 1
        if min_agreement is None:
            min_agreement = CLASSIFIER_MIN_AGREEMENT if by_class else REGRESSION_MIN_AGREEMENT
        self.min_agreement = float(min_agreement)
        self.reference_score = self._score(self.reference)
        self.boundary = boundary_rows(self.reference, classifier=classifier)
        #: Different quantized inputs among the calibration rows (:func:`distinct_rows`).
        self.distinct_rows = distinct_rows(calibration_q)

    def with_noise(self, noise: NoiseSpec) -> AccuracyGuard:
        """The same guard (rows, reference, thresholds) judging under another noise model."""
        other = copy.copy(self)
        other.noise = noise
        return other

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
        self,
        candidate: Program,
        parts: list[tuple[Program, np.ndarray]] | None = None,
        *,
        verdict_only: bool = False,
    ) -> GuardScore:
        """Mean agreement and mean score of ``candidate`` over the draws (its expectation:
        the circuit's noise draws anew in every run), and the share of rows whose class changed
        between the draws.

        ``parts``: score a candidate fitted to the calibration rows out of fold instead; each
        ``(variant, rows)`` pair gives the outputs of those rows (indices) by a variant fitted
        without them (see :func:`choose_rounding`). ``verdict_only``: stop drawing once more
        rows changed than ``max_unstable`` allows (the candidate fails whatever the other draws
        say; the figures returned are then of the draws made).
        """
        random = self.noise.random or any(
            layer.round_lsbs and not layer.rounding_exact for layer in candidate.layers
        )
        parts = parts or [(candidate, np.arange(len(self.calibration_q)))]
        rng = np.random.default_rng(self.seed)
        draws: list[GuardScore] = []
        classes: list[np.ndarray | None] = []
        changed: np.ndarray | None = None
        for _ in range(self.draws if random else 1):
            noise = self.noise.draw(rng) if random else None
            outputs = np.empty_like(self.reference)
            for variant, rows in parts:
                acc = variant.run_integer(self.calibration_q[rows], noise)
                outputs[rows] = variant.dequantize_output(acc)
            draws.append(self.score_outputs(outputs))
            classes.append(self._classes(outputs))
            if classes[0] is None:
                continue
            changed = (
                classes[-1] != classes[0]
                if changed is None
                else changed | (classes[-1] != classes[0])
            )
            if verdict_only and self._too_unstable(float(np.mean(changed)), len(changed)):
                break
        mean = GuardScore.mean(draws)
        return mean if changed is None else replace(mean, unstable=float(np.mean(changed)))

    def _too_unstable(self, unstable: float, n_rows: int, slack_rows: int = 0) -> bool:
        return (
            self.max_unstable is not None
            and unstable > self.max_unstable + slack_rows / max(1, n_rows) + 1e-12
        )

    def _classes(self, outputs: np.ndarray) -> np.ndarray | None:
        """The predicted classes of float outputs; ``None`` for a regressor."""
        if not self.classifier:
            return None
        if outputs.shape[1] > 1:
            return outputs.argmax(axis=1)
        return np.asarray(self.postprocess(outputs)).reshape(len(outputs))

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
        if result.unstable is not None and self._too_unstable(result.unstable, rows, slack_rows):
            return False
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
