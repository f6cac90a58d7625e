"""Lowering: ONNX -> our integer IR -> passes -> accumulator budget check -> rounding choice.

Everything before Concrete, in numpy: a :class:`Lowered` program is what the back end compiles
(see :func:`fheqnn.compiler.api.compile_program`), and everything here can be tested alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ClientContract, OutputSpec, Standardizer
from .ir import Program
from .options import CompileOptions
from .passes import RoundingChoice, check_lookup_domains, choose_rounding, drop_dead_neurons
from .report import analyse, check

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Lowered:
    """A program ready for the back end.

    Attributes:
        program: the IR after dead-neuron removal and rounding.
        contract: its client side (input standardization and quantization, output decoding).
        calibration_q: the calibration rows, quantized (int64, (n_rows, n_features)).
        removed_neurons: hidden neurons removed because they were dead.
        rounding: the rounding chosen per hidden layer, and its agreement.
        options: the options it was lowered with.
    """

    program: Program
    contract: ClientContract
    calibration_q: np.ndarray
    removed_neurons: int
    rounding: RoundingChoice
    options: CompileOptions


def lower_program(
    program: Program,
    calibration_inputs: Any,
    options: CompileOptions | None = None,
    *,
    output_spec: OutputSpec | None = None,
    standardizer: Standardizer | None = None,
) -> Lowered:
    """Run the passes on an IR program and check its accumulators against the budget.

    Args:
        program: the program as the front end read it.
        calibration_inputs: float rows (n_rows, n_features), before standardization; they choose
            the rounding (and, in the back end, Concrete's measurement).
        options: compilation options (default: :class:`CompileOptions`'s defaults).
        output_spec: client post-processing (class labels, target scaling).
        standardizer: per-feature standardization the client applies before quantizing.

    Raises:
        AccumulatorOverflowError: a layer's proven worst case exceeds ``n_accum_bits``, before
            any rounding choice or compilation.
    """
    options = options or CompileOptions()
    program, removed = drop_dead_neurons(program)
    check_lookup_domains(program)
    # The accumulator check comes before any rounding choice, compilation or key.
    check(analyse(program, options.n_accum_bits))

    contract = ClientContract.from_program(program, output_spec, standardizer)
    q_cal = contract.quantize(calibration_inputs, what="calibration inputs")
    if options.rounding == "off":
        hidden = sum(layer.is_hidden for layer in program.layers)
        choice = RoundingChoice([0] * hidden, [], 1.0)
    else:
        choice = choose_rounding(
            program,
            q_cal,
            target_bits=None if options.rounding == "auto" else int(options.rounding),
            min_agreement=options.min_agreement,
            exact=options.rounding_exact,
        )
    program = program.with_rounding(choice.lsbs, exact=options.rounding_exact)
    # Rounding never touches the output layer, so the contract built above still holds.
    return Lowered(program, contract, q_cal, removed, choice, options)


def lower_onnx(
    model: str | Path | Any,
    calibration_inputs: Any,
    options: CompileOptions | None = None,
    *,
    output_spec: OutputSpec | None = None,
    standardizer: Standardizer | None = None,
) -> Lowered:
    """Read a QCDQ MLP ONNX model (file or ModelProto) and lower it (see :func:`lower_program`)."""
    from .onnx_frontend import program_from_onnx

    return lower_program(
        program_from_onnx(model),
        calibration_inputs,
        options,
        output_spec=output_spec,
        standardizer=standardizer,
    )
