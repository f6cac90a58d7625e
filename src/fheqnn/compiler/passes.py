"""Passes over the integer IR: remove neurons that cost lookups for nothing, choose rounding."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

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
                values = layer.lookup(round_lsbs(zero_acc, layer.round_lsbs))[0]
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


@dataclass(frozen=True)
class RoundingChoice:
    """Result of :func:`choose_rounding`."""

    lsbs: list[int]
    lossless: list[int]
    agreement: float


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose outputs match: same argmax for several outputs, else close values."""
    if reference.shape[1] > 1:
        return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    spread = float(np.std(reference)) or 1.0
    return float(np.mean(np.abs(reference - candidate)[:, 0] <= 0.05 * spread))


def choose_rounding(
    program: Program,
    calibration_q: np.ndarray,
    *,
    target_bits: int | None = None,
    min_agreement: float = 0.99,
    exact: bool = True,
) -> RoundingChoice:
    """Choose how many accumulator bits each hidden layer rounds away before its lookup.

    Without ``target_bits`` ("auto"): every layer starts at its lossless rounding; then all
    hidden lookups get the lowest common precision whose outputs on the calibration rows agree
    with the unrounded program's on at least ``min_agreement`` of the rows (same class when there
    are several outputs; agreement is not monotonic in the precision, so every precision is
    tried); then each layer alone is lowered further, one bit at a time, while the guard holds.
    With ``target_bits``: every lookup input gets that precision (or its full width when
    narrower).
    """
    hidden = [layer for layer in program.layers if layer.is_hidden]
    if not hidden:
        return RoundingChoice([], [], 1.0)
    widths = [layer.proven_range().bits for layer in hidden]
    lossless = [capped_lsbs(layer, lossless_round_lsbs(layer), exact) for layer in hidden]
    reference = program.dequantize_output(program.run_integer(calibration_q))

    def agreement_of(lsbs: list[int]) -> float:
        candidate = program.with_rounding(lsbs, exact)
        return _agreement(
            reference, candidate.dequantize_output(candidate.run_integer(calibration_q))
        )

    def at_precision(target: int) -> list[int]:
        return [
            capped_lsbs(layer, max(r, w - target), exact)
            for layer, w, r in zip(hidden, widths, lossless, strict=True)
        ]

    if target_bits is not None:
        lsbs = [
            capped_lsbs(layer, max(0, w - target_bits), exact)
            for layer, w in zip(hidden, widths, strict=True)
        ]
        return RoundingChoice(lsbs, lossless, agreement_of(lsbs))

    best, best_agreement = list(lossless), agreement_of(lossless)
    for target in range(max(widths) - 1, 0, -1):
        lsbs = at_precision(target)
        agreement = agreement_of(lsbs)
        if agreement >= min_agreement:
            best, best_agreement = lsbs, agreement
    # Per layer: some layers tolerate coarser lookups than others.
    for i in range(len(hidden)):
        while best[i] < widths[i] - 1:
            trial = list(best)
            trial[i] = capped_lsbs(hidden[i], best[i] + 1, exact)
            if trial[i] <= best[i]:
                break
            agreement = agreement_of(trial)
            if agreement < min_agreement:
                break
            best, best_agreement = trial, agreement
    return RoundingChoice(best, lossless, best_agreement)
