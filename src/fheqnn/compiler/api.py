"""Entry point of the compiler: ``compile_onnx`` and the :class:`CompiledModel` it returns."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import InvalidParameterError
from ..validation import check_features
from . import backend
from .ir import Program
from .onnx_frontend import program_from_onnx
from .passes import RoundingChoice, check_lookup_domains, choose_rounding, drop_dead_neurons
from .report import BitWidthReport, analyse, check
from .serialize import program_to_dict

logger = logging.getLogger(__name__)

FHE_MODES = ("disable", "simulate", "execute")


@dataclass(frozen=True)
class OutputSpec:
    """Client-side post-processing of the network's float outputs.

    Attributes:
        kind: ``"raw"`` (outputs as they are), ``"classifier"`` (argmax -> ``classes``) or
            ``"regressor"`` (``outputs * y_scale + y_mean``).
    """

    kind: str = "raw"
    classes: tuple[Any, ...] | None = None
    y_mean: tuple[float, ...] | None = None
    y_scale: tuple[float, ...] | None = None
    squeeze: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("raw", "classifier", "regressor"):
            raise InvalidParameterError(f"unknown output kind {self.kind!r}")

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        """Post-process float network outputs (n_rows, n_outputs)."""
        if self.kind == "classifier":
            idx = outputs.argmax(axis=1)
            return idx if self.classes is None else np.asarray(self.classes)[idx]
        if self.kind == "regressor":
            values = outputs * np.asarray(self.y_scale) + np.asarray(self.y_mean)
            return values[:, 0] if self.squeeze else values
        return outputs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "classes": None if self.classes is None else list(self.classes),
            "y_mean": None if self.y_mean is None else list(self.y_mean),
            "y_scale": None if self.y_scale is None else list(self.y_scale),
            "squeeze": self.squeeze,
        }


def output_spec_from_dict(d: dict[str, Any]) -> OutputSpec:
    """Inverse of :meth:`OutputSpec.to_dict`."""
    return OutputSpec(
        kind=d["kind"],
        classes=None if d.get("classes") is None else tuple(d["classes"]),
        y_mean=None if d.get("y_mean") is None else tuple(d["y_mean"]),
        y_scale=None if d.get("y_scale") is None else tuple(d["y_scale"]),
        squeeze=bool(d.get("squeeze", False)),
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class CompileStats:
    """Measured facts of one compilation."""

    compile_seconds: float
    pbs_count: int
    hidden_neurons: int
    removed_neurons: int
    rounding: RoundingChoice
    max_bit_width: int
    statistics: dict[str, Any] = field(default_factory=dict, repr=False)


class CompiledModel:
    """A network compiled to a Concrete circuit, with its client-side pre and post-processing.

    ``predict(X, fhe="disable" | "simulate" | "execute")``: the IR interpreter, Concrete's
    simulation of the circuit, or real encryption (keys are generated on first use, in memory).
    """

    def __init__(
        self,
        program: Program,
        circuit: Any,
        report: BitWidthReport,
        stats: CompileStats,
        output_spec: OutputSpec,
    ) -> None:
        self.program = program
        self.circuit = circuit
        self.report = report
        self.stats = stats
        self.output_spec = output_spec
        self._keys_ready = False
        self._simulation_ready = False

    # ------------------------------------------------------------------ facts
    @property
    def n_features(self) -> int:
        """Features per input row."""
        return self.program.n_features

    @property
    def pbs_count(self) -> int:
        """Programmable bootstraps per row, from the circuit's statistics."""
        return self.stats.pbs_count

    # ------------------------------------------------------------------ running
    def quantize(self, x: Any) -> np.ndarray:
        """Client side: validate float rows and quantize them (int64, (n_rows, n_features))."""
        return self.program.quantize_input(check_features(x, self.n_features))

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
            rows = [self.circuit.simulate(row[None, :]) for row in q]
        else:
            self.keygen()
            rows = [self.circuit.encrypt_run_decrypt(row[None, :]) for row in q]
        raw = np.concatenate([np.asarray(r, dtype=np.int64).reshape(1, -1) for r in rows])
        return backend.unshift_outputs(self.program, raw)

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
        q = self.quantize(x)
        return self.program.dequantize_output(self.run_integer(q, fhe))

    def predict_proba(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Softmax of the outputs (classifiers)."""
        return softmax(self.predict_raw(x, fhe))

    def predict(self, x: Any, fhe: str = "disable") -> np.ndarray:
        """Predictions after post-processing: class labels, regression values or raw outputs."""
        return self.output_spec.apply(self.predict_raw(x, fhe))

    # ------------------------------------------------------------------ saving
    def _client_dict(self) -> dict[str, Any]:
        out = self.program.layers[-1]
        return {
            "format": 1,
            "n_features": self.program.n_features,
            "n_outputs": self.program.n_outputs,
            "input_quantizer": program_to_dict(self.program)["input_quantizer"],
            "output_layer": {
                "shift": out.shift,
                "offset": out.offset.tolist(),
                "acc_scale": out.acc_scale.tolist(),
                "bias": out.bias.tolist(),
                "activation": program_to_dict(self.program)["layers"][-1]["activation"],
            },
            "output_spec": self.output_spec.to_dict(),
        }

    def save(self, folder: str | Path, *, overwrite: bool = False) -> str:
        """Save the compiled model to a folder (see :mod:`fheqnn.runtime.artifacts`).

        The folder is written atomically; an existing non-empty folder is refused unless
        ``overwrite``. Returns the model id that keys and ciphertexts will refer to.
        """
        import json
        import tempfile

        from ..runtime import artifacts as art

        with tempfile.TemporaryDirectory() as tmp:
            server_path = Path(tmp) / art.SERVER_FILE
            with backend.quiet_concrete_io():
                self.circuit.server.save(server_path, via_mlir=True)
            server_bytes = server_path.read_bytes()
        files = {
            art.SERVER_FILE: server_bytes,
            art.PROGRAM_FILE: json.dumps(program_to_dict(self.program)).encode(),
            art.CLIENT_SPECS_FILE: self.circuit.server.client_specs.serialize(),
            art.CLIENT_FILE: json.dumps(self._client_dict()).encode(),
            art.REPORT_FILE: json.dumps(self.summary(), indent=2).encode(),
        }
        extra = {"n_features": self.n_features, "n_outputs": self.program.n_outputs}
        manifest = art.write_model_folder(Path(folder), files, extra, overwrite=overwrite)
        logger.info("saved compiled model %s to %s", manifest["model_id"], folder)
        return str(manifest["model_id"])

    def summary(self) -> dict[str, Any]:
        """Report and statistics as plain data (what ``report.json`` holds)."""
        stats = self.stats
        return {
            "source": self.program.source,
            "n_accum_bits": self.report.n_accum_bits,
            "layers": self.report.as_dicts(),
            "pbs_count": stats.pbs_count,
            "hidden_neurons": stats.hidden_neurons,
            "removed_neurons": stats.removed_neurons,
            "compile_seconds": stats.compile_seconds,
            "max_bit_width": stats.max_bit_width,
            "rounding_lsbs": stats.rounding.lsbs,
            "rounding_agreement": stats.rounding.agreement,
            "evaluation_keys_bytes_estimate": int(
                stats.statistics.get("size_of_bootstrap_keys", 0)
                + stats.statistics.get("size_of_keyswitch_keys", 0)
            ),
            "input_ciphertext_bytes": int(stats.statistics.get("size_of_inputs", 0)),
            "output_ciphertext_bytes": int(stats.statistics.get("size_of_outputs", 0)),
        }

    def __repr__(self) -> str:
        return (
            f"CompiledModel({self.program.source}: {self.n_features} features, "
            f"{self.program.hidden_neurons()} lookups/row, {self.pbs_count} PBS/row)"
        )


def compile_onnx(
    model: str | Path | onnx.ModelProto,
    calibration_inputs: Any,
    *,
    n_accum_bits: int | None = None,
    rounding: str | int | None = "auto",
    rounding_exact: bool = True,
    min_agreement: float = 0.99,
    p_error: float | None = None,
    global_p_error: float | None = None,
    configuration: Any = None,
    output_spec: OutputSpec | None = None,
) -> CompiledModel:
    """Compile a QCDQ MLP ONNX model (file or ModelProto) to a Concrete circuit.

    Args:
        model: the ONNX model or its path.
        calibration_inputs: float rows (n_rows, n_features) used to measure bit-widths and to
            choose the rounding.
        n_accum_bits: accumulator budget in bits; every layer's proven worst case (and what
            Concrete measures) must fit, else :class:`~fheqnn.AccumulatorOverflowError` is
            raised before compiling. ``None``: no budget.
        rounding: ``"auto"`` (lossless rounding, then lower lookup precision while predictions on
            the calibration rows keep ``min_agreement`` with the unrounded program), an int
            (the lookup input precision in bits, for every hidden layer), or ``None`` / ``"off"``.
        rounding_exact: exact rounding (bit-exact with the interpreter; costs extra small
            lookups) or Concrete's approximate rounding (one lookup per neuron, rare off-by-one).
        min_agreement: the accuracy guard of ``"auto"`` rounding.
        p_error, global_p_error: Concrete's error probability per lookup / per circuit run.
        configuration: a full ``fhe.Configuration`` (overrides ``p_error``/``global_p_error``).
        output_spec: client post-processing (class labels, target scaling).

    Returns:
        The compiled model, its bit-width report in ``.report``.
    """
    if n_accum_bits is not None and (
        isinstance(n_accum_bits, bool) or not isinstance(n_accum_bits, int) or n_accum_bits < 1
    ):
        raise InvalidParameterError(
            f"n_accum_bits must be an int >= 1 or None, got {n_accum_bits!r}"
        )
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise InvalidParameterError(f"min_agreement must be in [0, 1], got {min_agreement!r}")
    if rounding not in ("auto", "off", None) and (
        isinstance(rounding, bool) or not isinstance(rounding, int) or rounding < 1
    ):
        raise InvalidParameterError(
            f"rounding must be 'auto', 'off', None or a precision in bits >= 1, got {rounding!r}"
        )

    program = program_from_onnx(model)
    calibration = check_features(calibration_inputs, program.n_features, what="calibration inputs")
    program, removed = drop_dead_neurons(program)
    check_lookup_domains(program)

    # The accumulator check comes before any rounding choice, compilation or key.
    check(analyse(program, n_accum_bits))

    q_cal = program.quantize_input(calibration)
    if rounding in ("off", None):
        choice = RoundingChoice([0] * sum(layer.is_hidden for layer in program.layers), [], 1.0)
    else:
        choice = choose_rounding(
            program,
            q_cal,
            target_bits=None if rounding == "auto" else int(rounding),
            min_agreement=float(min_agreement),
            exact=rounding_exact,
        )
    program = program.with_rounding(choice.lsbs, exact=rounding_exact)

    if configuration is None:
        options: dict[str, Any] = {}
        if p_error is not None or global_p_error is not None:
            options = {"p_error": p_error, "global_p_error": global_p_error}
        configuration = backend.make_configuration(**options)
    in_range = program.input_quantizer.range
    inputset = [row[None, :] for row in q_cal]
    # Cover the whole input quantizer range so that every legal input can be encrypted.
    inputset += [
        np.full((1, program.n_features), in_range.lo, dtype=np.int64),
        np.full((1, program.n_features), in_range.hi, dtype=np.int64),
    ]
    start = time.perf_counter()
    circuit = backend.compile_circuit(program, inputset, configuration)
    seconds = time.perf_counter() - start

    report = analyse(program, n_accum_bits, backend.measured_ranges(circuit, program))
    check(report)
    stats = CompileStats(
        compile_seconds=seconds,
        pbs_count=int(circuit.programmable_bootstrap_count),
        hidden_neurons=program.hidden_neurons(),
        removed_neurons=removed,
        rounding=choice,
        max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
        statistics=dict(circuit.statistics),
    )
    logger.info(
        "compiled %s in %.1f s: %d PBS per row, max %d bits",
        program.source,
        seconds,
        stats.pbs_count,
        stats.max_bit_width,
    )
    return CompiledModel(program, circuit, report, stats, output_spec or OutputSpec())
