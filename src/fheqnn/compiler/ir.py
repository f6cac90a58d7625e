"""Our integer IR between ONNX and Concrete, and its exact interpreter.

A :class:`Program` is a client-side input quantizer followed by linear layers. Each layer is an
integer matrix product of the encrypted activations by clear integer weights (leveled, cheap)
followed, for hidden layers, by one table lookup per neuron that applies the accumulator offset,
rescale, bias, activation and the next quantizer at once. The last layer has no lookup: the
circuit returns its integer accumulator and the client finishes in the clear.

The interpreter here is the reference: Concrete simulation and encrypted execution must give the
same integers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ..intervals import IntRange, bits_for_range
from .kernels import ELEMENTWISE_KERNELS, kernel
from .linear_ops import Conv2d, LinearPlan, MaxPool2d, matrix_ranges
from .rounding import APPROX_ROUNDING_SPREAD, CircuitNoise, round_lsbs

__all__ = [
    "APPROX_ROUNDING_SPREAD",
    "CircuitNoise",
    "Elementwise",
    "ElementwiseNode",
    "Layer",
    "Program",
    "Quantizer",
    "accumulator_value",
    "int64_array",
    "round_lsbs",
]

# ----------------------------------------------------------------------------- quantizers


def int64_array(value: Any) -> np.ndarray:
    """``value`` as int64, refusing what the cast would change silently (``ValueError``):
    floats that are not whole or not finite, or out of int64's range (numpy would only warn,
    and wrap). Values read from files come this way."""
    raw = np.asarray(value)
    if raw.dtype.kind == "f" and raw.size:
        whole = np.all(np.isfinite(raw)) and np.all(raw == np.rint(raw))
        if not (whole and raw.min() >= -(2.0**63) and raw.max() < 2.0**63):
            raise ValueError(f"not whole numbers within int64's range: {raw.ravel()[:4]}")
        return raw.astype(np.int64)
    return np.asarray(value, dtype=np.int64)  # Python ints past int64: OverflowError


def _as_array(value: Any, dtype: Any) -> np.ndarray:
    arr = int64_array(value) if np.dtype(dtype) == np.int64 else np.asarray(value, dtype=dtype)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Quantizer:
    """Uniform affine quantizer ``q = clip(rint(x / scale) + zero_point, qmin, qmax)``.

    ``rint`` rounds half to even, as ONNX QuantizeLinear does. ``scale`` and ``zero_point`` are
    scalars or per-channel vectors over the last axis.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _as_array(self.scale, np.float64))
        object.__setattr__(self, "zero_point", _as_array(self.zero_point, np.int64))

    @property
    def range(self) -> IntRange:
        """Integers this quantizer can emit."""
        return IntRange(self.qmin, self.qmax)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float values to integers (int64)."""
        q = np.rint(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Integers back to float values."""
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale

    def select(self, index: np.ndarray) -> Quantizer:
        """The same quantizer restricted to some channels (per-channel parameters only)."""
        if self.scale.ndim == 0 and self.zero_point.ndim == 0:
            return self
        scale = self.scale if self.scale.ndim == 0 else self.scale[index]
        zp = self.zero_point if self.zero_point.ndim == 0 else self.zero_point[index]
        return Quantizer(scale, zp, self.qmin, self.qmax)

    def describe(self) -> str:
        """One-line text form."""
        scale = (
            f"{float(self.scale):.6g}" if self.scale.ndim == 0 else f"per-channel{self.scale.shape}"
        )
        zp = f"{int(self.zero_point)}" if self.zero_point.ndim == 0 else "per-channel"
        return f"scale={scale} zero_point={zp} range=[{self.qmin}, {self.qmax}]"


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class ElementwiseNode:
    """One float operation of an activation chain (an ONNX node, its constants resolved)."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    output: str
    attributes: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, eq=False)
class Elementwise:
    """A chain (DAG) of element-wise float operations, from ``input`` to ``output``.

    Constants are scalars or per-channel vectors over the last axis. Each node's op type names
    its numpy kernel in :mod:`fheqnn.compiler.kernels`.
    """

    nodes: tuple[ElementwiseNode, ...]
    input: str
    output: str
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted({n.op_type for n in self.nodes} - set(ELEMENTWISE_KERNELS))
        if unknown:
            raise ValueError(f"no element-wise kernel for op type(s) {unknown}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values: dict[str, np.ndarray] = {self.input: np.asarray(x, dtype=np.float64)}
        for node in self.nodes:
            args = []
            for name in node.inputs:
                if name == "":
                    args.append(None)
                elif name in values:
                    args.append(values[name])
                else:
                    args.append(self.constants[name])
            values[node.output] = np.asarray(
                kernel(node.op_type)(*args, **dict(node.attributes)), dtype=np.float64
            )
        return values[self.output]

    def select(self, index: np.ndarray, width: int) -> Elementwise:
        """The same chain restricted to some channels (slices per-channel constants)."""
        constants = {
            name: (value[index] if value.ndim >= 1 and value.shape[-1] == width else value)
            for name, value in self.constants.items()
        }
        return replace(self, constants=constants)

    def describe(self) -> str:
        """The op types, in order."""
        return " -> ".join(node.op_type for node in self.nodes) or "identity"


#: Integers below this are exact in float64 (with a factor 2 of margin).
_FLOAT_EXACT_BOUND = 2**52


# ----------------------------------------------------------------------------- layers


def accumulator_value(
    acc: np.ndarray, offset: np.ndarray, acc_scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """Real value of integer accumulators: ``(acc + offset) * acc_scale + bias``."""
    return (np.asarray(acc, dtype=np.int64) + offset) * acc_scale + bias


@dataclass(frozen=True, eq=False)
class Layer:
    """An integer linear layer, and for a hidden layer its per-neuron table lookup.

    Attributes:
        name: the layer's name, from its ONNX node; carried into tags, reports and errors.
        weight: clear integer weights, int64, shape ``(n_out, n_in)``.
        input_range: the integers that reach this layer (its input quantizer's range).
        offset: int64 ``(n_out,)``, added to the accumulator inside the lookup (zero points and
            folded constant neurons), so the encrypted accumulator never carries it.
        acc_scale: float64 ``(n_out,)``, the real value of one accumulator unit.
        bias: float64 ``(n_out,)``.
        activation: the float chain after the bias (``None``: identity).
        output_quantizer: the next layer's input quantizer; ``None`` for the output layer, whose
            accumulator is returned to the client and dequantized there.
        round_lsbs: low accumulator bits dropped (rounded) before the lookup.
        rounding_exact: exact rounding (bit-exact, extra lookups) or Concrete's approximate one.
        grid_offset: int64 ``(n_out,)`` in ``(-2**round_lsbs, 2**round_lsbs)``, a clear
            constant added to each neuron's accumulator before rounding and removed inside its
            lookup. It moves the rounding grid of each neuron so that rounding changes the
            fewest lookups (chosen on calibration rows by
            :func:`fheqnn.compiler.passes.align_rounding_grid`); all zero without rounding.
        plan: how the circuit computes the accumulators when ``weight`` is the composition of
            structured maps (convolutions, sum pools; :mod:`fheqnn.compiler.linear_ops`);
            ``None``: one dense product by ``weight``. Everything but the back end reads
            ``weight``, which must equal ``plan.matrix()``.
        input_pool: a max pool of the layer's input integers, before ``weight`` (whose
            columns are then the pool's outputs); ``None``: none.
    """

    name: str
    weight: np.ndarray
    input_range: IntRange
    offset: np.ndarray
    acc_scale: np.ndarray
    bias: np.ndarray
    activation: Elementwise | None
    output_quantizer: Quantizer | None
    round_lsbs: int = 0
    rounding_exact: bool = True
    grid_offset: np.ndarray | int = 0
    plan: LinearPlan | None = None
    input_pool: MaxPool2d | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_array(self.weight, np.int64))
        n_out = self.weight.shape[0]
        if self.input_pool is not None and self.input_pool.n_out != self.weight.shape[1]:
            raise ValueError(
                f"layer {self.name!r}: its max pool gives {self.input_pool.n_out} values but its "
                f"weights take {self.weight.shape[1]}"
            )
        if self.plan is not None and (self.plan.n_out, self.plan.n_in) != self.weight.shape:
            raise ValueError(
                f"layer {self.name!r}: its linear plan maps {self.plan.n_in} -> "
                f"{self.plan.n_out} values but its weights are {self.weight.shape[::-1]}"
            )
        for attr, dtype in (
            ("offset", np.int64),
            ("acc_scale", np.float64),
            ("bias", np.float64),
            ("grid_offset", np.int64),
        ):
            value = np.broadcast_to(np.asarray(getattr(self, attr), dtype=dtype), (n_out,))
            object.__setattr__(self, attr, _as_array(value, dtype))

    @property
    def n_inputs(self) -> int:
        """Number of input neurons (before the input pool, if any)."""
        if self.input_pool is not None:
            return self.input_pool.n_in
        return int(self.weight.shape[1])

    @property
    def n_outputs(self) -> int:
        """Number of neurons of this layer."""
        return int(self.weight.shape[0])

    @property
    def is_hidden(self) -> bool:
        """Whether this layer ends with a table lookup."""
        return self.output_quantizer is not None

    def max_nonzeros(self) -> int:
        """Largest number of non-zero weights of one neuron."""
        return int((self.weight != 0).sum(axis=1).max(initial=0))

    def neuron_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Proven accumulator interval of each neuron, from its integer weights (int64 arrays,
        read-only: computed once per layer, which is frozen)."""
        return self._neuron_ranges

    @cached_property
    def _neuron_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = matrix_ranges(self.weight, self.input_range.lo, self.input_range.hi)
        lo.flags.writeable = False
        hi.flags.writeable = False
        return lo, hi

    def output_units(self) -> tuple[str, np.ndarray]:
        """What each neuron belongs to, for messages: ``("channel", channel of each neuron)``
        for a layer whose accumulators end in a convolution or pool, ``("neuron", index)``
        otherwise."""
        last = None if self.plan is None else self.plan.ops[-1]
        if isinstance(last, Conv2d):
            rows = np.arange(last.n_out) if self.plan.rows is None else self.plan.rows
            return "channel", rows // (last.n_out // last.out_shape[0])
        return "neuron", np.arange(self.n_outputs)

    def units_over(self, n_bits: int) -> str | None:
        """The channels (or neurons) whose proven accumulator needs more than ``n_bits`` bits,
        in words (``None``: none)."""
        lo, hi = self.neuron_ranges()
        over = [i for i in range(self.n_outputs) if bits_for_range(int(lo[i]), int(hi[i])) > n_bits]
        if not over:
            return None
        kind, unit = self.output_units()
        names = sorted({int(unit[i]) for i in over})
        shown = ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")
        total = len(np.unique(unit))
        return f"{kind}{'s' if len(names) > 1 else ''} {shown} ({len(names)} of {total})"

    def plan_fits(self) -> bool:
        """Whether the circuit may compute this layer by its plan: every value the plan
        computes (:meth:`~fheqnn.compiler.linear_ops.LinearPlan.intermediate_ranges`) fits
        the width of the accumulator's proven range, so that nothing in the circuit is wider
        than what was proven. Otherwise (a pool after a convolution whose sums cancel, outputs of a
        convolution that no one reads but are wide) the back end computes the layer as one
        dense product by ``weight``: the same integers, leveled, and no wider."""
        return self._plan_fits

    @cached_property
    def _plan_fits(self) -> bool:
        if self.plan is None:
            return False
        # The accumulator itself, before its shift, is held on its proven range's width (as
        # an MLP's matmul output is): the plan's other values may take as much, no more.
        bits = max(self.proven_range().bits, self.circuit_bits())
        ranges = self.plan.intermediate_ranges(self.input_range.lo, self.input_range.hi)
        return all(bits_for_range(lo, hi) <= bits for lo, hi in ranges)

    def lookup_margin(self) -> int:
        """How far beyond its proven interval :meth:`lookup_range` follows each accumulator:
        ``2 ** bits`` of the layer's proven range (and at least twice the widest neuron's
        span). Rounding moves a lookup's input by less than two steps (half a step exact, up
        to a step approximate, on a grid moved by less than a step), and a lookup keeps at
        least one bit of the proven width, so a step is at most ``2 ** (bits - 1)``
        (:func:`~fheqnn.compiler.passes.check_lookup_margins` checks it before compiling)."""
        lo, hi = self.neuron_ranges()
        span = int((hi - lo).max(initial=0))
        return 1 << max(self.proven_range().bits, span.bit_length() + 1)

    #: Beyond this many accumulator values per neuron, :meth:`lookup_range` does not enumerate
    #: them (a foreign network with wide accumulators) and keeps the quantizer's range.
    MAX_LOOKUP_VALUES = 1 << 14

    def lookup_range(self) -> IntRange:
        """Integers this hidden layer's table lookups give the next layer: the hull of every
        neuron's lookup over its proven accumulator interval widened by
        :meth:`lookup_margin` on both sides, which holds every value rounding can hand the
        lookup. Tighter than the next quantizer's range when the activation cannot reach all
        of it: a ReLU into a signed 3-bit quantizer gives [0, 3], not [-4, 3]. The circuit
        clips its tables to this range, so that a wrong lookup (a bootstrap error) cannot
        leave it either (``backend.circuit_function``)."""
        quantizer = self.output_quantizer
        if quantizer is None:
            raise ValueError(f"layer {self.name!r} is the output layer: it has no table lookup")
        lo, hi = self.neuron_ranges()
        margin = self.lookup_margin()
        count = int((hi - lo).max(initial=0)) + 2 * margin + 1
        if count > self.MAX_LOOKUP_VALUES:
            return quantizer.range
        out_lo, out_hi = quantizer.qmax, quantizer.qmin
        # Blocks of accumulator values for every neuron at once (a convolution's layer has
        # thousands of neurons): memory stays at 256 x n_out values.
        for start in range(0, count, 256):
            steps = np.arange(start, min(start + 256, count))[:, None]
            acc = np.minimum(lo[None, :] - margin + steps, hi[None, :] + margin)
            with np.errstate(all="ignore"):
                pre = self.activate(self.pre_activation(acc))
            # Where a chain gives NaN (a Log beyond the proven interval), the table holds the
            # quantizer's lowest value: counted as such.
            out = quantizer.quantize(np.nan_to_num(pre, nan=-np.inf))
            out_lo, out_hi = min(out_lo, int(out.min())), max(out_hi, int(out.max()))
        return IntRange(out_lo, out_hi)

    def proven_range(self) -> IntRange:
        """Worst-case accumulator interval of the whole layer."""
        lo, hi = self.neuron_ranges()
        return IntRange(int(lo.min(initial=0)), int(hi.max(initial=0)))

    @property
    def shift(self) -> int:
        """Clear constant the circuit adds to the accumulator so that it is never negative.

        Concrete decides whether an encrypted integer is signed from the values it sees on the
        calibration rows; a value of the other sign at run time would then be misread. Adding
        ``shift`` (at least ``-proven lo`` of every neuron, grid offset included, and a multiple
        of ``2**round_lsbs`` so that rounding commutes with it) makes every possible accumulator
        non-negative by construction, whatever the calibration rows were. The lookup (or the
        client, for the output layer) subtracts it.
        """
        lo, _ = self.neuron_ranges()
        low = int((lo + self.grid_offset).min(initial=0))
        if low >= 0:
            return 0
        step = 1 << self.round_lsbs
        return -(low // step) * step

    def circuit_range(self) -> IntRange:
        """Values the circuit's (shifted, rounded) lookup input can take, over every input.

        Approximate rounding may land one step above exact rounding, so it gets one more step.
        """
        _, hi = self.neuron_ranges()
        top = int((hi + self.grid_offset).max(initial=0)) + self.shift
        if self.round_lsbs:
            top = int(round_lsbs(np.array([top]), self.round_lsbs)[0])
            if not self.rounding_exact:
                top += 1 << self.round_lsbs
        return IntRange(0, max(top, 0))

    def circuit_bits(self) -> int:
        """Width (bits) of the lookup input in the circuit, before rounding removes low bits."""
        return self.circuit_range().bits

    def lookup_bits(self) -> int:
        """Precision (bits) of the table lookup's input after rounding."""
        return max(1, self.circuit_bits() - self.round_lsbs)

    def accumulate(self, q: np.ndarray) -> np.ndarray:
        """Integer matrix product, shape ``(..., n_in) -> (..., n_out)``.

        Computed in float64 (BLAS: ~20 x faster than numpy's integer product on calibration
        sets) when every partial sum is provably an integer below 2**52, where float64 is
        exact; in int64 otherwise. The result is the same either way.
        """
        q = np.asarray(q, dtype=np.int64)
        if self.input_pool is not None:
            q = self.input_pool.apply(q)
        if q.size and int(np.abs(q).max()) * self._weight_abs_row_sum < _FLOAT_EXACT_BOUND:
            return (q.astype(np.float64) @ self._weight_float.T).astype(np.int64)
        return q @ self.weight.T

    @cached_property
    def _weight_float(self) -> np.ndarray:
        return self.weight.astype(np.float64)

    @cached_property
    def _weight_abs_row_sum(self) -> int:
        """The largest sum of absolute weights of a neuron: with inputs at most ``m`` in absolute
        value, no partial sum of its product exceeds ``m`` times this."""
        return int(np.abs(self.weight).sum(axis=1).max(initial=0))

    def pre_activation(self, acc: np.ndarray) -> np.ndarray:
        """Real value of accumulators (offset, rescale, bias)."""
        return accumulator_value(acc, self.offset, self.acc_scale, self.bias)

    def activate(self, pre: np.ndarray) -> np.ndarray:
        """Apply the float activation chain."""
        return pre if self.activation is None else self.activation(pre)

    def lookup(self, acc: np.ndarray) -> np.ndarray:
        """The table lookup of a hidden layer: accumulator (already rounded) -> next integers."""
        if self.output_quantizer is None:
            raise ValueError(f"layer {self.name!r} is the output layer: it has no table lookup")
        return self.output_quantizer.quantize(self.activate(self.pre_activation(acc)))

    def round_and_lookup(self, acc: np.ndarray, noise: CircuitNoise | None = None) -> np.ndarray:
        """What the circuit does after the matmul of a hidden layer: add the grid offset, round
        ``round_lsbs`` bits away, then look up with the offset removed. With ``noise``, one
        draw of the circuit's randomness (approximate rounding's off-by-one steps, bootstrap
        errors); without, the deterministic reference."""
        acc = np.asarray(acc, dtype=np.int64) + self.grid_offset
        if noise is not None:
            # The shift is a multiple of the step: rounding commutes with it.
            table = (self.shift, self.lookup_bits())
            rounded = noise.round(acc, self.round_lsbs, self.rounding_exact, table)
        else:
            rounded = round_lsbs(acc, self.round_lsbs)
        return self.lookup(rounded - self.grid_offset)

    def dequantize_output(self, acc: np.ndarray) -> np.ndarray:
        """Client-side end of the output layer: accumulators to float outputs."""
        return self.activate(self.pre_activation(acc))


@dataclass(frozen=True, eq=False)
class Program:
    """A whole network in our integer IR.

    Attributes:
        input_quantizer: client-side quantization of the float features.
        layers: the linear layers, input to output (the last one has no lookup).
        source: where the program came from (e.g. the ONNX file), for messages.
        input_shape: the shape of one input row as the model takes it (e.g. ``(1, 8, 8)``
            for an image), flattened in C order into the ``n_features`` the program reads;
            ``None``: a flat row of features.
    """

    input_quantizer: Quantizer
    layers: tuple[Layer, ...]
    source: str = "<program>"
    input_shape: tuple[int, ...] | None = None

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return self.layers[0].n_inputs

    @property
    def n_outputs(self) -> int:
        """Number of outputs."""
        return self.layers[-1].n_outputs

    def hidden_neurons(self) -> int:
        """Number of table lookups per row (one per hidden neuron)."""
        return sum(layer.n_outputs for layer in self.layers if layer.is_hidden)

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Client side: float features (n_rows, n_features) to integers."""
        return self.input_quantizer.quantize(x)

    def run_integer(
        self, q: np.ndarray, noise: CircuitNoise | np.random.Generator | None = None
    ) -> np.ndarray:
        """What the circuit computes: input integers to the output layer's accumulators.

        Args:
            q: input integers (n_rows, n_features).
            noise: with a noise model, one draw of the encrypted run's randomness (approximate
                rounding's random off-by-one steps, bootstrap errors); a bare generator draws
                approximate rounding at :data:`APPROX_ROUNDING_SPREAD` only; without, every
                rounding is exact and every lookup right (the deterministic reference).
        """
        if isinstance(noise, np.random.Generator):
            noise = CircuitNoise(noise)
        *_, (_, acc) = self._accumulators(q, noise)
        return acc

    def _accumulators(
        self, q: np.ndarray, noise: CircuitNoise | None = None
    ) -> Iterator[tuple[Layer, np.ndarray]]:
        """Each layer with its accumulators, input to output (see :meth:`run_integer`)."""
        q = np.asarray(q, dtype=np.int64)
        for index, layer in enumerate(self.layers):
            acc = layer.accumulate(q)
            yield layer, acc
            if not layer.is_hidden:
                return
            q = layer.round_and_lookup(acc, noise)
            if noise is not None:
                # As the circuit's tables (backend.circuit_function): a wrong lookup gives
                # an entry of the table, clipped to what the next layer was proven on.
                bound = self.layers[index + 1].input_range
                q = np.clip(q, bound.lo, bound.hi)
        raise AssertionError("a program ends with an output layer")  # pragma: no cover

    def dequantize_output(self, acc: np.ndarray) -> np.ndarray:
        """Client side: output accumulators to float outputs."""
        return self.layers[-1].dequantize_output(acc)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The exact interpreter: float features to float outputs."""
        return self.dequantize_output(self.run_integer(self.quantize_input(x)))

    def with_rounding(
        self,
        lsbs: list[int],
        exact: bool = True,
        grid_offsets: list[np.ndarray] | None = None,
    ) -> Program:
        """A copy with ``lsbs[i]`` accumulator bits rounded before hidden layer ``i``'s lookup,
        on a grid moved by ``grid_offsets[i]`` (default: not moved)."""
        hidden = [i for i, layer in enumerate(self.layers) if layer.is_hidden]
        if len(lsbs) != len(hidden):
            raise ValueError(f"expected {len(hidden)} rounding values, got {len(lsbs)}")
        offsets = grid_offsets if grid_offsets is not None else [0] * len(hidden)
        layers = list(self.layers)
        for i, r, g in zip(hidden, lsbs, offsets, strict=True):
            if np.any(np.abs(np.asarray(g)) >= (1 << int(r))):
                raise ValueError(
                    f"grid offsets of layer {self.layers[i].name!r} outside (-2**{r}, 2**{r})"
                )
            layers[i] = replace(layers[i], round_lsbs=int(r), rounding_exact=exact, grid_offset=g)
        return replace(self, layers=tuple(layers))

    def hidden_accumulators(self, q: np.ndarray) -> list[np.ndarray]:
        """Accumulators of every hidden layer on input integers ``q`` (exact rounding)."""
        return [acc for layer, acc in self._accumulators(q) if layer.is_hidden]

    def __str__(self) -> str:
        lines = [f"program from {self.source}"]
        lines.append(
            f"  input: quantize {self.n_features} features on the client, "
            f"{self.input_quantizer.describe()}"
        )
        for layer in self.layers:
            proven = layer.proven_range()
            w_bits = bits_for_range(
                int(layer.weight.min(initial=0)), int(layer.weight.max(initial=0))
            )
            lines.append(
                f"  {layer.name}: acc = x @ W.T, W int{w_bits} {layer.weight.shape[::-1]}, "
                f"max {layer.max_nonzeros()} non-zeros/neuron, input {layer.input_range}, "
                f"proven acc {proven} ({proven.bits} bits)"
            )
            if layer.input_pool is not None:
                pool = layer.input_pool
                lines.append(
                    f"    input first: {pool.describe()}, "
                    f"{pool.lookups_per_output * pool.n_out} lookups"
                )
            if layer.plan is not None:
                how = "computed as" if layer.plan_fits() else "dense product (wider inside:"
                end = "" if layer.plan_fits() else ")"
                lines.append(f"    {how}: {layer.plan.describe()}{end}")
            activation = layer.activation.describe() if layer.activation else "identity"
            if layer.output_quantizer is not None:
                mode = "exact" if layer.rounding_exact else "approx"
                moved = int(np.count_nonzero(layer.grid_offset))
                mode += f", {moved} grids moved" if moved else ""
                rounding = f"round {layer.round_lsbs} lsbs ({mode}), " if layer.round_lsbs else ""
                lines.append(
                    f"    lookup x{layer.n_outputs}: {rounding}{layer.lookup_bits()}-bit input, "
                    f"bias + rescale + {activation} + quantize "
                    f"({layer.output_quantizer.describe()})"
                )
            else:
                lines.append(
                    "    output: accumulators returned; client adds bias, rescales"
                    + (f", applies {activation}" if layer.activation else "")
                )
        return "\n".join(lines)
