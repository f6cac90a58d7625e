"""Concrete back end: an IR program to a ``concrete.fhe`` circuit.

Where a Gemm becomes a matmul plus a table lookup: :func:`circuit_function`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..intervals import IntRange
from .ir import Program


def _fhe():
    # concrete declares its namespace with pkg_resources and warns about it on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from concrete import fhe
    return fhe


logger = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_concrete_io() -> Iterator[None]:
    """Silence the jsonpickle deprecation that Concrete's server save/load emits (harmless)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "keys will default to True", DeprecationWarning)
        yield


def tag_of(name: str) -> str:
    """Concrete tag of a layer: its name, with the characters tags reserve replaced."""
    return re.sub(r"[^0-9A-Za-z_\-/]", "_", name)


def _shifted_lookup(layer: Any) -> Callable[[np.ndarray], np.ndarray]:
    shift = layer.shift

    def lookup(acc: np.ndarray) -> np.ndarray:
        return layer.lookup(np.asarray(acc, dtype=np.int64) - shift)

    return lookup


def circuit_function(program: Program) -> Callable[[Any], Any]:
    """The function Concrete traces: input integers -> output-layer accumulators.

    Per layer: a leveled integer matmul with clear weights, a clear shift that makes it
    non-negative, a hint that fixes its width to the proven worst case (so that no input can
    overflow it, whatever the calibration rows were), optional rounding of low bits, then one
    table lookup per neuron. The output layer returns its shifted accumulator; see
    :func:`unshift_outputs`.
    """
    fhe = _fhe()
    layers = program.layers

    def forward(q):
        x = q
        for layer in layers:
            with fhe.tag(tag_of(layer.name)):
                acc = np.matmul(x, layer.weight.T)
                # Shifted to be non-negative by construction (see Layer.shift), and hinted to
                # the width that holds every possible value, whatever the calibration rows were.
                if layer.shift:
                    acc = acc + layer.shift
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
                x = fhe.univariate(_shifted_lookup(layer))(acc)
        raise AssertionError("a program ends with an output layer")  # pragma: no cover

    return forward


def unshift_outputs(program: Program, raw: np.ndarray) -> np.ndarray:
    """Circuit outputs back to the output layer's accumulators (removes the clear shift)."""
    return np.asarray(raw, dtype=np.int64) - program.layers[-1].shift


def compile_circuit(program: Program, inputset: list[np.ndarray], configuration: Any) -> Any:
    """Compile ``program`` with Concrete on integer input rows of shape ``(1, n_features)``."""
    fhe = _fhe()
    compiler = fhe.Compiler(circuit_function(program), {"q": "encrypted"})
    return compiler.compile(inputset, configuration)


def measured_ranges(circuit: Any, program: Program) -> dict[str, IntRange]:
    """Accumulator range Concrete measured on the calibration rows, per layer name."""
    by_tag = {tag_of(layer.name): layer.name for layer in program.layers}
    found: dict[str, IntRange] = {}
    for node in circuit.graph.graph.nodes:
        name = by_tag.get(node.tag)
        if name is None or node.properties.get("name") != "matmul" or node.bounds is None:
            continue
        found[name] = IntRange(int(node.bounds[0]), int(node.bounds[1]))
    return found


#: Defaults of our Concrete configuration: compressed evaluation keys and input ciphertexts
#: (what the client uploads shrinks; the server decompresses them once).
DEFAULT_CONFIGURATION = {"compress_evaluation_keys": True, "compress_input_ciphertexts": True}


def make_configuration(**options: Any) -> Any:
    """A ``fhe.Configuration`` from our defaults updated with ``options``."""
    fhe = _fhe()
    return fhe.Configuration(**{**DEFAULT_CONFIGURATION, **options})
