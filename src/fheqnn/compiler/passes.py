"""Passes over the integer IR: remove neurons that cost lookups for nothing, check lookup
domains, find the rounding that changes no lookup, and move rounding grids."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from scipy.special import ndtr

from ..errors import InternalError, InvalidModelError
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
        plan=None if layer.plan is None else layer.plan.keep_rows(keep),
    )


def drop_dead_neurons(program: Program) -> tuple[Program, int]:
    """Remove hidden neurons whose lookup would be wasted; the outputs stay bit-identical.

    * A neuron with no non-zero incoming weight outputs a constant: its value is folded into the
      next layer's offsets and the neuron is removed.
    * A neuron that no next-layer weight reads is removed.

    A next layer computed by a plan (a convolution) must still receive whole input channels:
    neurons it would not read, or that are constant, are removed only as whole channels
    (:meth:`~fheqnn.compiler.linear_ops.LinearPlan.droppable_inputs`); a layer computed by a
    plan drops any of its own outputs.

    Repeats until nothing changes. Returns the new program and the number of neurons removed.
    """
    layers = list(program.layers)
    removed = 0
    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            layer, nxt = layers[i], layers[i + 1]
            if nxt.input_pool is not None:
                # Every input of a max pool may be a window's maximum: none is dropped.
                continue
            constant = ~(layer.weight != 0).any(axis=1)
            unread = ~(nxt.weight != 0).any(axis=0)
            drop = constant | unread
            if nxt.plan is not None:
                drop &= nxt.plan.droppable_inputs(drop)
            if not drop.any() or drop.all():
                # Keep at least one neuron so the program keeps its shape.
                continue
            keep = ~drop
            # Constant neurons dropped: their lookup of a zero accumulator, times the next
            # weights (a constant neuron that stays, in a channel only partly constant, is
            # still read from its column).
            const_index = np.nonzero(constant & ~unread & drop)[0]
            offset = nxt.offset.copy()
            if const_index.size:
                zero_acc = np.zeros((1, layer.n_outputs), dtype=np.int64)
                values = layer.round_and_lookup(zero_acc)[0]
                offset = offset + nxt.weight[:, const_index] @ values[const_index]
            layers[i] = _keep_neurons(layer, keep)
            layers[i + 1] = replace(
                nxt,
                weight=nxt.weight[:, keep],
                offset=offset,
                plan=None if nxt.plan is None else nxt.plan.keep_inputs(keep),
            )
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


def check_lookup_margins(program: Program) -> None:
    """The premise of the next layers' input ranges (:meth:`Layer.lookup_range`): rounding
    moves no accumulator beyond the margin over which its lookup's outputs were bounded.

    Raises:
        InternalError: a rounding step too large for that margin (never expected: a lookup
            keeps at least one bit, so a step is below the accumulator's own width).
    """
    for layer in program.layers:
        if layer.is_hidden and 2 << layer.round_lsbs > layer.lookup_margin():
            raise InternalError(
                f"layer {layer.name!r}: rounding {layer.round_lsbs} bits moves accumulators "
                f"further than the margin ({layer.lookup_margin()}) over which the next layer's "
                "input range was proven"
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
#: than :data:`fheqnn.compiler.rounding.APPROX_ROUNDING_SPREAD` (0.1, the guard's model): in
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
    :func:`fheqnn.compiler.rounding.round_lsbs_approx`, wider).
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
