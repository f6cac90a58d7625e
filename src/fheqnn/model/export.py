"""Export a trained network to a standard QCDQ ONNX file with brevitas.

The file holds QuantizeLinear / Clip / DequantizeLinear around each Gemm and the activations
(opset 14, a dynamic batch axis). It is the only thing the compiler reads: the ONNX front end
never looks at the torch module.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from ..errors import InvalidParameterError
from ..fileio import atomic_write_bytes
from .qnn_module import SparseQuantNeuralNetwork

logger = logging.getLogger(__name__)

#: ONNX opset of our exports (the one brevitas' QCDQ export emits with the pinned torch).
EXPORT_OPSET = 14
INPUT_NAME = "x"
OUTPUT_NAME = "y"


def _flush_c_stdio() -> None:
    """Flush the C library's stdout buffer (native printf output is buffered there)."""
    with contextlib.suppress(OSError, AttributeError):  # no libc symbols on this platform
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Send what native code writes on file descriptors 1 and 2 to the log, not the terminal.

    brevitas runs onnxoptimizer, whose C++ side warns on stderr about the legacy exporter's IR
    version; library code must not print.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _flush_c_stdio()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logger.debug("exporter output: %s", text)


def export_module_to_onnx(
    module: SparseQuantNeuralNetwork, path: str | Path | None = None
) -> onnx.ModelProto:
    """Export ``module`` to QCDQ ONNX; write it to ``path`` if given.

    Pruning masks are applied to the exported integer weights whether they are live or made
    permanent (only the latter removes pruned neurons, saving their table lookups).

    The export traces the module in eval mode with the legacy TorchScript exporter, which gives
    opset 14 and a dynamic batch axis on input ``x`` and output ``y``. The model is checked with
    ``onnx.checker`` before anything is written; the file is written atomically.

    Returns:
        The ONNX model.
    """
    if not isinstance(module, SparseQuantNeuralNetwork):
        raise InvalidParameterError(
            f"expected a SparseQuantNeuralNetwork, got {type(module).__name__}"
        )
    if module.pruning_enabled:
        # Live masks export as zero integer weights (the module keeps the masked copy current);
        # make_pruning_permanent() would also drop the neurons removed by structured pruning.
        logger.info("exporting with live pruning masks; pruned neurons stay as all-zero rows")
    return export_qcdq(module, torch.zeros(1, module.input_dim), path)


def export_qcdq(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path | None = None
) -> onnx.ModelProto:
    """Export any brevitas module (an MLP or a convolutional network, ours or not) to QCDQ
    ONNX, as :func:`export_module_to_onnx` does; ``example``: one input of the right shape
    (e.g. ``torch.zeros(1, 1, 8, 8)`` for 8x8 one-channel images)."""
    with warnings.catch_warnings():
        # brevitas.export imports its deprecated brevitas.fx module and warns that an optional
        # GPU kernel package is missing; neither matters for exporting.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "fast_hadamard_transform", UserWarning)
        from brevitas.export import export_onnx_qcdq

    was_training = module.training
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), _native_output_to_log():
            # The exporter warns about tracing details that do not affect a fixed network.
            warnings.simplefilter("ignore")
            export_onnx_qcdq(
                module,
                args=example,
                export_path=buffer,
                opset_version=EXPORT_OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    if path is not None:
        atomic_write_bytes(Path(path), model.SerializeToString())
        logger.info("exported ONNX model to %s", path)
    return model
