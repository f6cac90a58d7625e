"""Entry point of the compiler: ``compile_onnx`` and the :class:`CompiledModel` it returns.

Two steps, each usable alone: :func:`~fheqnn.compiler.lowering.lower_onnx` (ONNX -> IR ->
passes -> budget check, numpy only) and :func:`compile_program` (IR -> Concrete circuit,
measured bit-width report). :func:`compile_onnx` chains them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ClientContract, OutputSpec, Standardizer, softmax
from ..errors import InvalidParameterError
from ..runtime.artifacts import save_compiled_model
from . import backend
from .backend import run_in_chunks
from .guard import MIN_GUARD_ROWS
from .ir import Program
from .lowering import Lowered, announce, lower_onnx, round_for
from .noise import NoiseSpec
from .options import EXACT_P_ERROR, CompileOptions
from .p_error_search import choose_p_error, key_bytes_estimate
from .report import BitWidthReport, analyse, check
from .rounding_search import RoundingChoice

__all__ = [
    "FHE_MODES",
    "CompileOptions",
    "CompileStats",
    "CompiledModel",
    "OutputSpec",
    "compile_onnx",
    "compile_program",
    "output_spec_from_dict",
    "softmax",
]

logger = logging.getLogger(__name__)

FHE_MODES = ("disable", "simulate", "execute")


def output_spec_from_dict(d: dict[str, Any]) -> OutputSpec:
    """Inverse of :meth:`OutputSpec.to_dict` (kept for callers of the first version)."""
    return OutputSpec.from_dict(d)


@dataclass
class CompileStats:
    """Measured facts of one compilation.

    Attributes:
        pbs_count: programmable bootstraps per row (the circuit's count over its batch size).
        statistics: Concrete's statistics of the circuit, per call (``batch_size`` rows).
        complexity: Concrete's cost estimate of the circuit (deterministic; what the
            ``p_error`` search ranks candidates by).
        stability: whether answers are bit-exact, and the share of calibration rows whose
            prediction changed over draws of the circuit's noise (:func:`stability_record`).
    """

    compile_seconds: float
    pbs_count: int
    hidden_neurons: int
    removed_neurons: int
    rounding: RoundingChoice
    max_bit_width: int
    statistics: dict[str, Any] = field(default_factory=dict, repr=False)
    guard_message: str | None = None
    p_error: Any = None
    p_error_curve: list[dict[str, Any]] = field(default_factory=list)
    complexity: float | None = None
    stability: dict[str, Any] = field(default_factory=dict)


class CompiledModel:
    """A network compiled to a Concrete circuit, with its client contract.

    ``predict(X, fhe="disable" | "simulate" | "execute")``: the IR interpreter, Concrete's
    simulation of the circuit, or real encryption (keys are generated on first use, in memory).
    The circuit takes ``batch_size`` rows per call; simulation and encryption cut the rows
    into such chunks and drop the padding of the last one.
    """

    def __init__(
        self,
        program: Program,
        circuit: Any,
        report: BitWidthReport,
        stats: CompileStats,
        contract: ClientContract,
        *,
        lowered: Lowered | None = None,
        configuration: Any = None,
    ) -> None:
        self.program = program
        self.circuit = circuit
        self.report = report
        self.stats = stats
        self.contract = contract
        self._lowered = lowered
        self._configuration = configuration
        self._keys_ready = False
        self._simulation_ready = False

    # ------------------------------------------------------------------ facts
    @property
    def n_features(self) -> int:
        """Features per input row."""
        return self.program.n_features

    @property
    def batch_size(self) -> int:
        """Rows per circuit call."""
        return self.contract.batch_size

    @property
    def pbs_count(self) -> int:
        """Programmable bootstraps per row, from the circuit's statistics."""
        return self.stats.pbs_count

    @property
    def output_spec(self) -> OutputSpec:
        """Client post-processing of the outputs."""
        return self.contract.output_spec

    # ------------------------------------------------------------------ running
    def quantize(self, x: Any) -> np.ndarray:
        """Client side: validate, standardize and quantize float rows (int64)."""
        return self.contract.quantize(x)

    def run_integer(self, q: np.ndarray, fhe: str = "disable") -> np.ndarray:
        """Output-layer accumulators (int64) of integer input rows, in the given mode."""
        if fhe not in FHE_MODES:
            raise InvalidParameterError(f"fhe must be one of {FHE_MODES}, got {fhe!r}")
        q = np.asarray(q, dtype=np.int64)
        if fhe == "disable":
            return self.program.run_integer(q)
        if fhe == "simulate":
            if not self._simulation_ready:
                self.circuit.enable_fhe_simulation()
                self._simulation_ready = True
            call = self.circuit.simulate
        else:
            self.keygen()
            call = self.circuit.encrypt_run_decrypt
        return self.contract.unshift(run_in_chunks(call, q, self.contract))

    def keygen(self, force: bool = False) -> float:
        """Generate keys in memory (once); returns the seconds it took (0 when already done)."""
        if self._keys_ready and not force:
            return 0.0
        start = time.perf_counter()
        self.circuit.keygen(force=force)
        self._keys_ready = True
        return time.perf_counter() - start

    def predict_raw(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Float outputs of the network (n_rows, n_outputs), before post-processing."""
        return self.contract.dequantize(self.run_integer(self.quantize(x), fhe))

    def predict_proba(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Softmax of the outputs (classifiers)."""
        return softmax(self.predict_raw(x, fhe))

    def predict(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Predictions after post-processing: class labels, regression values or raw outputs."""
        return self.contract.postprocess(self.predict_raw(x, fhe))

    def with_batch_size(self, batch_size: int) -> CompiledModel:
        """The same program compiled again for another number of rows per call.

        Nothing is lowered again: the rounding and the error probability chosen for this model
        are kept (no new ``p_error`` search), so the two circuits compute the same thing.

        Raises:
            InvalidParameterError: ``batch_size`` out of range, or a model that was not built
                by :func:`compile_program` (no lowered program to compile again).
        """
        if self._lowered is None:
            raise InvalidParameterError(
                "this compiled model does not hold its lowered program; compile it with "
                "compile_onnx(..., batch_size=N) instead"
            )
        values: dict[str, Any] = {"batch_size": batch_size}
        if self._lowered.options.p_error == "auto":
            values["p_error"] = self.stats.p_error
        lowered = replace(self._lowered, options=self._lowered.options.replace(**values))
        model = compile_program(lowered, self._configuration)
        if self.contract.feature_names is not None:
            model.contract = replace(model.contract, feature_names=self.contract.feature_names)
        return model

    # ------------------------------------------------------------------ saving
    def save(self, folder: str | Path, *, overwrite: bool = False) -> str:
        """Save the compiled model to a folder (see :mod:`fheqnn.runtime.artifacts`).

        The folder is written atomically; an existing non-empty folder is refused unless
        ``overwrite``. Returns the model id that keys and ciphertexts will refer to.
        """
        return save_compiled_model(self, Path(folder), overwrite=overwrite)

    def summary(self) -> dict[str, Any]:
        """Report and statistics as plain data (what ``report.json`` holds)."""
        stats = self.stats
        return {
            "source": self.program.source,
            "batch_size": self.batch_size,
            "n_accum_bits": self.report.n_accum_bits,
            "layers": self.report.as_dicts(),
            "pbs_count": stats.pbs_count,
            "hidden_neurons": stats.hidden_neurons,
            "removed_neurons": stats.removed_neurons,
            "compile_seconds": stats.compile_seconds,
            "max_bit_width": stats.max_bit_width,
            "rounding_lsbs": stats.rounding.lsbs,
            "rounding_agreement": stats.rounding.agreement,
            "rounding_exact": stats.rounding.exact,
            # Per hidden layer: neurons whose rounding grid was moved (align_rounding).
            "rounding_grid_moved": [
                int(np.count_nonzero(layer.grid_offset))
                for layer in self.program.layers
                if layer.is_hidden
            ],
            "lookup_bits": [
                layer.lookup_bits() for layer in self.program.layers if layer.is_hidden
            ],
            "estimated_seconds_per_row": stats.rounding.estimated_cost_s,
            "p_error": stats.p_error,
            "p_error_curve": stats.p_error_curve,
            "profile": "exact" if self._lowered and self._lowered.options.exact else "default",
            "complexity": stats.complexity,
            "stability": stats.stability,
            "accuracy_guard": {
                "ok": stats.rounding.guard_ok and stats.guard_message is None,
                "agreement": stats.rounding.agreement,
                "boundary_agreement": stats.rounding.boundary_agreement,
                "calibration_score": stats.rounding.score,
                "reference_calibration_score": stats.rounding.reference_score,
                "fallback": stats.rounding.fallback,
                "message": stats.guard_message,
                # What "ok" was judged against (loosened thresholds judge less).
                "thresholds": self._guard_thresholds(),
            },
            "evaluation_keys_bytes_estimate": key_bytes_estimate(stats.statistics),
            # Per row, as the PBS count: a call's ciphertexts hold batch_size rows.
            "input_ciphertext_bytes": int(stats.statistics.get("size_of_inputs", 0))
            // self.batch_size,
            "output_ciphertext_bytes": int(stats.statistics.get("size_of_outputs", 0))
            // self.batch_size,
        }

    def _guard_thresholds(self) -> dict[str, Any] | None:
        """The accuracy guard's thresholds this model was judged by (``None``: not known)."""
        lowered = self._lowered
        if lowered is None or lowered.guard is None:
            return None
        options = lowered.options
        return {
            "min_agreement": lowered.guard.min_agreement,
            "min_boundary_agreement": options.min_boundary_agreement,
            "max_accuracy_loss": options.max_accuracy_loss,
            "max_unstable": options.max_unstable,
            "min_distinct_calibration_rows": MIN_GUARD_ROWS,
        }

    def __repr__(self) -> str:
        return (
            f"CompiledModel({self.program.source}: {self.n_features} features, "
            f"{self.program.hidden_neurons()} lookups/row, {self.pbs_count} PBS/row, "
            f"{self.batch_size} row(s)/call)"
        )


def calibration_inputset(lowered: Lowered, batch_size: int) -> list[np.ndarray]:
    """What Concrete measures ranges on: ``(batch_size, n_features)`` integer arrays.

    The calibration rows in chunks (the last one completed by cycling from the first rows, so
    that every chunk holds real rows), then one chunk of the input quantizer's lowest value and
    one of its highest, so that every legal input can be encrypted.
    """
    program = lowered.program
    q = np.asarray(lowered.calibration_q, dtype=np.int64)
    chunks = [
        q[np.arange(start, start + batch_size) % len(q)] for start in range(0, len(q), batch_size)
    ]
    in_range = program.input_quantizer.range
    shape = (batch_size, program.n_features)
    chunks += [
        np.full(shape, in_range.lo, dtype=np.int64),
        np.full(shape, in_range.hi, dtype=np.int64),
    ]
    return chunks


def _complexity(circuit: Any) -> float | None:
    try:
        return float(circuit.complexity)
    except (AttributeError, RuntimeError):  # pragma: no cover - older Concrete
        return None


def stability_record(lowered: Lowered, p_error: Any, configuration: Any = None) -> dict[str, Any]:
    """What ``report.json`` says of the compiled model's repeatability.

    ``bit_exact``: no approximate rounding, and an error probability per lookup too small for
    any bootstrap error to be drawn (the bit-exact profile's 2**-40): every encrypted run then
    gives the integer interpreter's answer. Otherwise the share of calibration rows whose
    predicted class changed over the noise model's draws (``fheqnn.compiler.noise``; ``None``
    for regressors), and the budget it was held to. ``stability_judged``: whether the guard
    held the choice to that budget (``False`` with ``max_unstable=None``); ``guard_ok``:
    whether the choice kept the accuracy guard and the budget under the circuit's noise.
    """
    choice = lowered.rounding
    approximate = any(
        layer.round_lsbs and not layer.rounding_exact for layer in lowered.program.layers
    )
    known = configuration is None  # a caller's configuration: its error probability is its own
    global_p_error = lowered.noise_global_p_error if known else None
    noise = NoiseSpec.at(p_error, global_p_error) if known else None
    n_rows = len(lowered.calibration_q)
    unstable = choice.unstable
    random = approximate or (noise is not None and noise.random)
    exact_p = isinstance(p_error, float) and p_error <= EXACT_P_ERROR
    return {
        "bit_exact": bool(known and not approximate and exact_p),
        "approximate_rounding": approximate,
        "p_error": p_error if known else "configuration",
        "global_p_error": global_p_error,
        "unstable_calibration_share": unstable,
        "unstable_calibration_rows": None if unstable is None else round(unstable * n_rows),
        "calibration_rows": n_rows,
        "distinct_calibration_rows": None if lowered.guard is None else lowered.guard.distinct_rows,
        "max_unstable": lowered.options.max_unstable,
        "stability_judged": lowered.options.max_unstable is not None and unstable is not None,
        "guard_ok": bool(choice.guard_ok and lowered.guard_message in (None, choice.fallback)),
        "draws": lowered.guard.draws if random and lowered.guard is not None else 1,
        "approx_spread": None if noise is None else noise.approx_spread,
        "lookup_error": None if noise is None else noise.lookup_error,
    }


def compile_program(lowered: Lowered, configuration: Any = None) -> CompiledModel:
    """Compile a lowered program with Concrete and check what Concrete measured.

    The circuit takes ``(options.batch_size, n_features)`` integers per call; the client
    contract of the result records that batch size.

    Args:
        lowered: the output of :func:`~fheqnn.compiler.lowering.lower_onnx`.
        configuration: a full ``fhe.Configuration`` (overrides the options' ``p_error`` and
            ``global_p_error``).

    Raises:
        AccumulatorOverflowError: an accumulator measured wider than the budget.
    """
    program, options = lowered.program, lowered.options
    batch_size = options.batch_size
    lowered = replace(lowered, contract=replace(lowered.contract, batch_size=batch_size))
    inputset = calibration_inputset(lowered, batch_size)
    start = time.perf_counter()
    p_error_curve: list[dict[str, Any]] = []
    if configuration is not None:
        # The caller's configuration sets the error probabilities: judge the rounding under
        # them.
        chosen_p_error = getattr(configuration, "p_error", None)
        chosen_global = getattr(configuration, "global_p_error", None)
        noise = (lowered.noise_p_error, lowered.noise_global_p_error)
        if lowered.base_program is not None and noise != (chosen_p_error, chosen_global):
            lowered = round_for(lowered, chosen_p_error, chosen_global)
            program = lowered.program
        if not lowered.announced:
            lowered = announce(lowered)
        circuit = backend.compile_circuit(program, inputset, configuration)
    elif options.p_error != "auto":
        if not lowered.announced:
            lowered = announce(lowered)
        circuit = backend.compile_circuit(
            program, inputset, backend.make_configuration(**options.concrete_options())
        )
        chosen_p_error = options.p_error
    else:
        lowered, circuit, chosen_p_error = choose_p_error(lowered, inputset, p_error_curve)
        program = lowered.program
    seconds = time.perf_counter() - start

    report = analyse(program, options.n_accum_bits, backend.measured_ranges(circuit, program))
    check(report)
    stats = CompileStats(
        compile_seconds=seconds,
        pbs_count=int(circuit.programmable_bootstrap_count) // batch_size,
        hidden_neurons=program.hidden_neurons(),
        removed_neurons=lowered.removed_neurons,
        rounding=lowered.rounding,
        max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
        statistics=dict(circuit.statistics),
        guard_message=lowered.guard_message,
        p_error=chosen_p_error,
        p_error_curve=p_error_curve,
        complexity=_complexity(circuit),
        stability=stability_record(lowered, chosen_p_error, configuration),
    )
    logger.info(
        "compiled %s in %.1f s: %d PBS per row, %d row(s) per call, max %d bits",
        program.source,
        seconds,
        stats.pbs_count,
        batch_size,
        stats.max_bit_width,
    )
    return CompiledModel(
        program,
        circuit,
        report,
        stats,
        lowered.contract,
        lowered=lowered,
        configuration=configuration,
    )


def compile_onnx(
    model: str | Path | Any,
    calibration_inputs: Any,
    *,
    options: CompileOptions | None = None,
    output_spec: OutputSpec | None = None,
    standardizer: Standardizer | None = None,
    configuration: Any = None,
    calibration_labels: Any = None,
    **option_values: Any,
) -> CompiledModel:
    """Compile a QCDQ MLP ONNX model (file or ModelProto) to a Concrete circuit.

    Args:
        model: the ONNX model or its path.
        calibration_inputs: float rows (n_rows, n_features) used to measure bit-widths and to
            choose the rounding.
        options: a :class:`CompileOptions`; or give its fields as keywords (``n_accum_bits``,
            ``rounding``, ``rounding_exact``, ``min_agreement``, ``min_boundary_agreement``,
            ``max_accuracy_loss``, ``strict``, ``p_error``, ``global_p_error``,
            ``batch_size``), validated the same way.
        output_spec: client post-processing (class labels, target scaling).
        standardizer: per-feature standardization applied on the client before quantization.
        configuration: a full ``fhe.Configuration`` (overrides ``p_error``/``global_p_error``).
        calibration_labels: labels of the calibration rows: the rounding guard then keeps
            calibration accuracy (R2 for regressors) within ``max_accuracy_loss`` of the
            unrounded program's.

    Returns:
        The compiled model, its bit-width report in ``.report``.

    Raises:
        AccuracyLossError: with ``strict``, compile-time choices that break the accuracy guard.

    Warns:
        CompileAccuracyWarning: without ``strict``, the same.
    """
    if options is not None and option_values:
        raise InvalidParameterError(
            f"give either options= or option keywords, not both (got {sorted(option_values)})"
        )
    options = options or CompileOptions.from_kwargs(**option_values)
    lowered = lower_onnx(
        model,
        calibration_inputs,
        options,
        output_spec=output_spec,
        standardizer=standardizer,
        calibration_labels=calibration_labels,
        announce_rounding=False,  # compile_program speaks of the rounding it compiles
    )
    return compile_program(lowered, configuration)
