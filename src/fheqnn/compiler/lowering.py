"""Lowering: ONNX -> our integer IR -> passes -> accumulator budget check -> rounding choice.

Everything before Concrete, in numpy: a :class:`Lowered` program is what the back end compiles
(see :func:`fheqnn.compiler.api.compile_program`), and everything here can be tested alone.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ClientContract, FeatureRange, OutputSpec, Standardizer
from ..errors import AccuracyLossError, CompileAccuracyWarning, InvalidInputError
from .cost import estimated_cost_s
from .guard import MIN_GUARD_ROWS, AccuracyGuard
from .ir import Program
from .noise import NoiseSpec, per_lookup_p_error
from .options import P_ERROR_CANDIDATES, CompileOptions
from .passes import check_lookup_domains, drop_dead_neurons
from .report import analyse, check
from .rounding_search import RoundingChoice, choose_rounding, rows_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Lowered:
    """A program ready for the back end.

    Attributes:
        program: the IR after dead-neuron removal and rounding.
        contract: its client side (input standardization and quantization, output decoding).
        calibration_q: the calibration rows, quantized (int64, (n_rows, n_features)).
        removed_neurons: hidden neurons removed because they were dead.
        rounding: the rounding chosen per hidden layer, and what the guard measured.
        options: the options it was lowered with.
        calibration_labels: the calibration labels, when given.
        guard_message: what the accuracy guard said (``None``: nothing to say).
        guard: the accuracy guard the rounding was chosen with (its noise model is the one of
            ``noise_p_error``).
        base_program: the program before rounding (after dead-neuron removal), which the
            ``p_error`` search rounds again under each candidate's noise.
        noise_p_error: the error probability per lookup whose noise the rounding was judged
            under (``None``: Concrete's default).
        noise_global_p_error: the error probability per circuit run it was judged under
            (``None``: not set).
        announced: whether the guard has spoken of this rounding (:func:`announce`).
    """

    program: Program
    contract: ClientContract
    calibration_q: np.ndarray
    removed_neurons: int
    rounding: RoundingChoice
    options: CompileOptions
    calibration_labels: np.ndarray | None = None
    guard_message: str | None = None
    guard: AccuracyGuard | None = None
    base_program: Program | None = None
    noise_p_error: float | None = None
    announced: bool = False
    noise_global_p_error: float | None = None


def _labels(labels: Any, n_rows: int) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or len(arr) != n_rows:
        raise InvalidInputError(
            f"calibration labels must be one per calibration row ({n_rows}), got shape {arr.shape}"
        )
    return arr


def _postprocessing(contract: ClientContract) -> tuple[Any, bool]:
    """How the guard turns float outputs into predictions, and whether they are classes."""
    kind = contract.output_spec.kind
    if kind == "raw":
        if contract.n_outputs > 1:
            return (lambda outputs: outputs.argmax(axis=1)), True
        return contract.postprocess, False
    return contract.postprocess, kind == "classifier"


def noise_text(p_error: float | None, global_p_error: float | None = None) -> str:
    """How messages name the circuit noise a choice was judged under."""
    per_lookup = per_lookup_p_error(p_error, global_p_error)
    if per_lookup is None:
        return "Concrete's default error bound (1e-5 per circuit)"
    shown = f"an error probability of {per_lookup:g} per lookup"
    if global_p_error is not None:
        shown += f" (global_p_error={global_p_error:g})"
    return shown


def _guard_problems(
    choice: RoundingChoice,
    options: CompileOptions,
    n_rows: int,
    min_agreement: float,
    distinct_rows: int | None,
) -> list[str]:
    """The criteria of the accuracy guard that ``choice`` breaks, one phrase each."""
    problems: list[str] = []
    if choice.score is not None and choice.reference_score is not None:
        loss = choice.reference_score - choice.score
        # guard_ok: within max_accuracy_loss, or one calibration row for a classifier.
        if loss > options.max_accuracy_loss + 1e-12 and not choice.guard_ok:
            problems.append(
                f"calibration accuracy {choice.score:.4f} against {choice.reference_score:.4f} "
                f"unrounded (loss {loss:.4f} > max_accuracy_loss {options.max_accuracy_loss})"
            )
    elif choice.agreement < min_agreement - 1e-12:
        problems.append(
            f"agreement with the unrounded program {choice.agreement:.4f} < min_agreement "
            f"{min_agreement}"
        )
    if (
        choice.boundary_agreement is not None
        and choice.boundary_agreement < options.min_boundary_agreement - 1e-12
    ):
        problems.append(
            f"agreement on the calibration rows nearest the decision boundary "
            f"{choice.boundary_agreement:.4f} < min_boundary_agreement "
            f"{options.min_boundary_agreement}"
        )
    budget = options.max_unstable
    if budget is not None and choice.unstable is not None and choice.unstable > budget + 1e-12:
        problems.append(
            f"{choice.unstable:.2%} of the calibration rows change prediction between runs "
            f"under the circuit's noise > max_unstable {budget:.2%} (a smaller p_error, "
            "exact=True or a larger max_unstable would keep it)"
        )
    distinct = n_rows if distinct_rows is None else distinct_rows
    if any(choice.lsbs) and distinct < MIN_GUARD_ROWS:
        problems.append(
            f"only {rows_text(n_rows, distinct)}: too few to check a lossy rounding "
            f"(at least {MIN_GUARD_ROWS} distinct)"
        )
    return problems


def speak(
    choice: RoundingChoice,
    options: CompileOptions,
    n_rows: int,
    min_agreement: float,
    noise: str | None = None,
    distinct_rows: int | None = None,
) -> str | None:
    """What the accuracy guard has to say about a rounding choice; warns or (strict) raises.

    ``min_agreement``: the guard's threshold (``options.min_agreement``, or its default for
    the kind of output). ``noise``: the circuit noise it was judged under (:func:`noise_text`),
    named in the message. ``distinct_rows``: different quantized inputs among the ``n_rows``
    calibration rows (default: all of them), which a lossy rounding needs
    :data:`~fheqnn.compiler.guard.MIN_GUARD_ROWS` of.

    A fallback to lossless rounding is logged (it costs speed, not accuracy); a choice that
    breaks the guard, or that too few rows cannot check, is a
    :class:`~fheqnn.errors.CompileAccuracyWarning`, or with ``strict`` an
    :class:`~fheqnn.errors.AccuracyLossError`.
    """
    if choice.fallback is not None:
        logger.warning("rounding: %s", choice.fallback)
        if choice.guard_ok:
            return choice.fallback
    problems = _guard_problems(choice, options, n_rows, min_agreement, distinct_rows)
    if not problems:
        return None
    if any(choice.lsbs):
        advice = "Use rounding='auto', more calibration rows, rounding='off' or a smaller p_error"
    else:
        # Nothing is rounded: the loss is the circuit's error probability's alone.
        advice = (
            "Nothing is rounded: the loss comes from the error probability; give a smaller "
            "p_error (or p_error='auto', or exact=True)"
        )
    under = "" if noise is None else f" under {noise}"
    message = (
        f"rounding {options.rounding!r} ({'exact' if choice.exact else 'approximate'}, "
        f"lsbs {choice.lsbs}){under}: " + "; ".join(problems) + ". " + advice
    )
    if options.strict:
        raise AccuracyLossError(message)
    warnings.warn(message, CompileAccuracyWarning, stacklevel=3)
    logger.warning("accuracy guard: %s", message)
    return message


def _rounding_choice(
    program: Program, q_cal: np.ndarray, options: CompileOptions, guard: AccuracyGuard
) -> RoundingChoice:
    """The rounding ``options.rounding`` asks for: none, the search's, or a fixed precision."""
    if options.rounding == "off":
        hidden = sum(layer.is_hidden for layer in program.layers)
        score = guard.score(program)
        return RoundingChoice(
            [0] * hidden,
            [],
            score.agreement,
            True,
            score.score,
            guard.reference_score,
            estimated_cost_s(program),
            guard_ok=guard.passes(score),
            boundary_agreement=score.boundary_agreement,
            unstable=score.unstable,
        )
    return choose_rounding(
        program,
        q_cal,
        target_bits=None if options.rounding == "auto" else int(options.rounding),
        exact=options.rounding_exact,
        guard=guard,
        align=options.align_rounding,
    )


def lower_program(
    program: Program,
    calibration_inputs: Any,
    options: CompileOptions | None = None,
    *,
    output_spec: OutputSpec | None = None,
    standardizer: Standardizer | None = None,
    calibration_labels: Any = None,
    announce_rounding: bool = True,
) -> Lowered:
    """Run the passes on an IR program and check its accumulators against the budget.

    Args:
        program: the program as the front end read it.
        calibration_inputs: float rows (n_rows, n_features), before standardization; they choose
            the rounding (and, in the back end, Concrete's measurement).
        options: compilation options (default: :class:`CompileOptions`'s defaults).
        output_spec: client post-processing (class labels, target scaling).
        standardizer: per-feature standardization the client applies before quantizing.
        calibration_labels: labels of the calibration rows (n_rows,): the guard then keeps
            calibration accuracy (R2 for regressors) within ``max_accuracy_loss`` of the
            unrounded program's, instead of only agreement with it.
        announce_rounding: let the guard speak of the rounding now (:func:`announce`);
            ``False`` leaves it to the back end, which with ``p_error="auto"`` rounds again
            under each candidate's noise and speaks of the chosen one only.

    Raises:
        AccumulatorOverflowError: a layer's proven worst case exceeds ``n_accum_bits``, before
            any rounding choice or compilation.
        AccuracyLossError: with ``strict``, a rounding that breaks the accuracy guard.

    Warns:
        CompileAccuracyWarning: without ``strict``, a rounding that breaks the accuracy guard.
    """
    options = options or CompileOptions()
    program, removed = drop_dead_neurons(program)
    check_lookup_domains(program)
    # The accumulator check comes before any rounding choice, compilation or key.
    check(analyse(program, options.n_accum_bits))

    contract = ClientContract.from_program(program, output_spec, standardizer)
    x_cal = contract.check(calibration_inputs, what="calibration inputs")
    # The client warns about rows far outside what the model was calibrated on.
    contract = replace(contract, feature_range=FeatureRange.of_rows(x_cal))
    q_cal = contract.quantize(x_cal, what="calibration inputs", check_range=False)
    labels = _labels(calibration_labels, len(q_cal))
    postprocess, classifier = _postprocessing(contract)
    guard = AccuracyGuard(
        program,
        q_cal,
        postprocess=postprocess,
        labels=labels,
        classifier=classifier,
        min_agreement=options.min_agreement,
        min_boundary_agreement=options.min_boundary_agreement,
        max_score_loss=options.max_accuracy_loss,
        max_unstable=options.max_unstable,
    )
    # With p_error="auto" the search rounds again under each candidate's noise
    # (p_error_search); until then the rounding is judged under the smallest candidate's, the
    # most lenient, so that lowering alone warns only of what no candidate can keep.
    noise_p = P_ERROR_CANDIDATES[-1] if options.p_error == "auto" else options.p_error
    unrounded = Lowered(
        program, contract, q_cal, removed, RoundingChoice([], [], 1.0), options, labels,
        None, guard, program, noise_p,
    )  # fmt: skip
    lowered = round_for(unrounded, noise_p, options.global_p_error)
    return announce(lowered) if announce_rounding else lowered


def round_for(
    lowered: Lowered, p_error: float | None, global_p_error: float | None = None
) -> Lowered:
    """``lowered``'s program before rounding, rounded as its options ask under the noise of a
    circuit compiled for ``p_error`` per lookup and ``global_p_error`` per run (nothing said
    yet: see :func:`announce`). Every error probability a circuit is compiled for passes here,
    so the guard judges accuracy and stability under it, whether it rounds or not."""
    assert lowered.base_program is not None and lowered.guard is not None
    guard = lowered.guard.with_noise(NoiseSpec.at(p_error, global_p_error))
    program = lowered.base_program
    choice = _rounding_choice(program, lowered.calibration_q, lowered.options, guard)
    rounded = choice.apply(program)
    logger.info(
        "rounding %s (%s) under %s: lookup bits %s, agreement %.4f, "
        "unstable %s, estimated %.3f s per row",
        choice.lsbs,
        "exact" if choice.exact else "approximate",
        noise_text(p_error, global_p_error),
        [layer.lookup_bits() for layer in rounded.layers if layer.is_hidden],
        choice.agreement,
        "-" if choice.unstable is None else f"{choice.unstable:.4f}",
        choice.estimated_cost_s or 0.0,
    )
    # Rounding never touches the output layer, so the contract still holds.
    return replace(
        lowered, program=rounded, rounding=choice, guard=guard, guard_message=None,
        noise_p_error=p_error, noise_global_p_error=global_p_error, announced=False,
    )  # fmt: skip


def announce(lowered: Lowered) -> Lowered:
    """``lowered`` with what the accuracy guard has to say about its rounding (:func:`speak`:
    logged, warned, or raised with ``strict``)."""
    assert lowered.guard is not None
    message = speak(
        lowered.rounding,
        lowered.options,
        len(lowered.calibration_q),
        lowered.guard.min_agreement,
        noise_text(lowered.noise_p_error, lowered.noise_global_p_error),
        lowered.guard.distinct_rows,
    )
    return replace(lowered, guard_message=message, announced=True)


def lower_onnx(
    model: str | Path | Any,
    calibration_inputs: Any,
    options: CompileOptions | None = None,
    *,
    output_spec: OutputSpec | None = None,
    standardizer: Standardizer | None = None,
    calibration_labels: Any = None,
    announce_rounding: bool = True,
) -> Lowered:
    """Read a QCDQ MLP ONNX model (file or ModelProto) and lower it (see :func:`lower_program`)."""
    from .onnx_frontend import program_from_onnx

    return lower_program(
        program_from_onnx(model),
        calibration_inputs,
        options,
        output_spec=output_spec,
        standardizer=standardizer,
        calibration_labels=calibration_labels,
        announce_rounding=announce_rounding,
    )
