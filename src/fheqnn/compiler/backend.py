"""Concrete back end: an IR program to a ``concrete.fhe`` circuit.

Where a Gemm becomes a matmul plus a table lookup: :func:`circuit_function`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..concrete_seam import fhe as _fhe
from ..contract import ClientContract
from ..errors import InternalError
from ..intervals import IntRange
from .ir import Layer, Program
from .linear_ops import Conv2d, Dense, MaxPool2d

logger = logging.getLogger(__name__)


def tag_of(name: str) -> str:
    """Concrete tag of a layer: its name, with the characters tags reserve replaced."""
    return re.sub(r"[^0-9A-Za-z_\-/]", "_", name)


def _shifted_lookup(layer: Any, bound: IntRange) -> Callable[[np.ndarray], np.ndarray]:
    """The table of a hidden layer, on its shifted accumulator. Its entries are clipped to
    ``bound``, the next layer's proven input range: the entries a run without errors reaches
    lie in it already (``Layer.lookup_range``), and a wrong lookup then cannot leave it."""
    added = layer.shift + layer.grid_offset

    def lookup(acc: np.ndarray) -> np.ndarray:
        out = layer.lookup(np.asarray(acc, dtype=np.int64) - added)
        return np.clip(out, bound.lo, bound.hi)

    return lookup


def _conv(fhe: Any, op: Conv2d, x: Any) -> Any:
    """A convolution on traced encrypted rows: to images, zero-padded by assignment into
    encrypted zeros (Concrete's convolution takes no padding), Concrete's convolution, flat
    again."""
    rows = x.shape[0]
    channels, height, width = op.in_shape
    image = x.reshape((rows, channels, height, width))
    top, left, bottom, right = op.pads
    if any(op.pads):
        padded = fhe.zeros((rows, channels, height + top + bottom, width + left + right))
        padded[:, :, top : top + height, left : left + width] = image
        image = padded
    out = fhe.conv(
        image,
        op.kernel,
        strides=list(op.strides),
        dilations=list(op.dilations),
        group=op.group,
    )
    return out.reshape((rows, op.n_out))


def _max_pool(fhe: Any, pool: MaxPool2d, x: Any) -> Any:
    """A max pool on traced encrypted rows (Concrete's, with table lookups), flat again.

    Its result then goes through Concrete's identity, a lookup whose output may be wider than
    its input: without it, Concrete gives the pool's values the width of the accumulator they
    feed, and every maximum became a 10-bit lookup (polynomial size 65536: 564 s for the key
    generation and two rows of the test network of every op, against 30 s with it)."""
    rows = x.shape[0]
    image = x.reshape((rows, *pool.in_shape))
    out = fhe.maxpool(
        image,
        kernel_shape=list(pool.kernel_shape),
        strides=list(pool.strides),
        dilations=list(pool.dilations),
    )
    return fhe.identity(out.reshape((rows, pool.n_out)))


def _accumulate(fhe: Any, layer: Layer, x: Any) -> Any:
    """The layer's integer accumulators on traced encrypted rows: its input max pool, if any,
    then its plan's structured maps in order and the neurons kept (leveled: no lookup), or one
    matmul by its weights when it has no plan or the plan does not fit (``Layer.plan_fits``)."""
    if layer.input_pool is not None:
        x = _max_pool(fhe, layer.input_pool, x)
    if not layer.plan_fits():
        # No plan, or one whose values inside would be wider than the proven accumulator.
        return np.matmul(x, layer.weight.T)
    for op in layer.plan.ops:
        x = np.matmul(x, op.weight.T) if isinstance(op, Dense) else _conv(fhe, op, x)
    return x if layer.plan.rows is None else x[:, layer.plan.rows]


def circuit_function(program: Program) -> Callable[[Any], Any]:
    """The function Concrete traces: input integers -> output-layer accumulators.

    Per layer: a leveled integer matmul with clear weights (or the convolutions and products
    of its plan), a clear shift that makes it
    non-negative, a hint that fixes its width to the proven worst case (so that no input can
    overflow it, whatever the calibration rows were), optional rounding of low bits, then one
    table lookup per neuron. The output layer returns its shifted accumulator; the client
    contract (:meth:`fheqnn.contract.ClientContract.unshift`) removes the shift.
    """
    fhe = _fhe()
    layers = program.layers

    def forward(q):
        x = q
        for index, layer in enumerate(layers):
            with fhe.tag(tag_of(layer.name)):
                acc = _accumulate(fhe, layer, x)
                # Shifted to be non-negative by construction (see Layer.shift), and hinted to
                # the width that holds every possible value, whatever the calibration rows were.
                if layer.shift:
                    acc = acc + layer.shift
                if layer.grid_offset.any():
                    # Per-neuron rounding grid (passes.align_rounding_grid): a clear addition.
                    acc = acc + layer.grid_offset
                acc = fhe.hint(acc, bit_width=layer.circuit_bits())
                if not layer.is_hidden:
                    return acc
                if layer.round_lsbs:
                    # overflow_protection stays off: circuit_bits already holds the rounded
                    # extremes, and Concrete 2.11 mis-scales a hinted value when it is on.
                    acc = fhe.round_bit_pattern(
                        acc,
                        lsbs_to_remove=layer.round_lsbs,
                        overflow_protection=False,
                        exactness=fhe.Exactness.EXACT
                        if layer.rounding_exact
                        else fhe.Exactness.APPROXIMATE,
                    )
                bound = layers[index + 1].input_range
                x = fhe.univariate(_shifted_lookup(layer, bound))(acc)
        raise AssertionError("a program ends with an output layer")  # pragma: no cover

    return forward


def compile_circuit(program: Program, inputset: list[np.ndarray], configuration: Any) -> Any:
    """Compile ``program`` with Concrete on integer input rows of shape ``(1, n_features)``."""
    from .passes import check_lookup_margins

    check_lookup_margins(program)
    fhe = _fhe()
    compiler = fhe.Compiler(circuit_function(program), {"q": "encrypted"})
    try:
        return compiler.compile(inputset, configuration)
    except RuntimeError as exc:
        if str(exc).strip():
            raise
        # Concrete's server-library compile can fail with an empty RuntimeError when its
        # optimizer finds no cryptographic parameters for the circuit's mix of lookup widths
        # under the default error probability (seen on an iris model with 6- and 5-bit lookups;
        # the same circuit compiles with an explicit p_error or one rounding width).
        widths = ", ".join(f"{layer.name}: {layer.circuit_bits()} bits" for layer in program.layers)
        raise InternalError(
            "Concrete failed to compile the circuit without saying why (empty RuntimeError from "
            f"its server library; accumulators {widths}). This usually means its optimizer "
            "found no parameters for this mix of lookup widths: retry with an explicit "
            "p_error (e.g. p_error=1e-3) or a single rounding width (e.g. rounding=5)"
        ) from exc


#: Concrete's names of the nodes that can end a layer's accumulation (:func:`_accumulate`).
_ACCUMULATION_NODES = ("matmul", "conv2d", "reshape", "index_static")


def measured_ranges(circuit: Any, program: Program) -> dict[str, IntRange]:
    """Accumulator range Concrete measured on the calibration rows, per layer name: the last
    accumulation node of each layer's tag, in topological order."""
    by_tag = {tag_of(layer.name): layer.name for layer in program.layers}
    found: dict[str, IntRange] = {}
    for node in circuit.graph.query_nodes(ordered=True):
        name = by_tag.get(node.tag)
        if name is None or node.properties.get("name") not in _ACCUMULATION_NODES:
            continue
        if node.bounds is not None:
            found[name] = IntRange(int(node.bounds[0]), int(node.bounds[1]))
    return found


#: Defaults of our Concrete configuration: compressed evaluation keys and input ciphertexts
#: (what the client uploads shrinks; the server decompresses them once). Concrete's own default
#: dumps its debug files into a ``.artifacts`` folder of the current directory when a compile
#: fails unexpectedly: a failed command must leave the user's disk as it was, so that is off.
#: Concrete's dataflow runtime stays off (its defaults, written out): it is what Concrete's
#: exit handler stops, and that handler replaces the process's exit status
#: (:func:`fheqnn.concrete_seam.keep_exit_status` takes it out because we never start it).
DEFAULT_CONFIGURATION = {
    "compress_evaluation_keys": True,
    "compress_input_ciphertexts": True,
    "dump_artifacts_on_unexpected_failures": False,
    "dataflow_parallelize": False,
    "auto_parallelize": False,
}


def make_configuration(**options: Any) -> Any:
    """A ``fhe.Configuration`` from our defaults updated with ``options``."""
    fhe = _fhe()
    return fhe.Configuration(**{**DEFAULT_CONFIGURATION, **options})


def run_in_chunks(
    call: Callable[[np.ndarray], Any], q: np.ndarray, contract: ClientContract
) -> np.ndarray:
    """``call`` (one circuit call) over integer rows in chunks of the contract's batch size.

    Returns:
        The circuit outputs of the ``len(q)`` rows (int64), the last chunk's padding dropped.
    """
    outputs = [np.asarray(call(chunk), dtype=np.int64) for chunk in contract.chunks(q)]
    return contract.trim(outputs, len(q))
