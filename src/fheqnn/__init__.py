"""fheqnn: sparse quantized neural networks from training to encrypted inference on Concrete.

The package is lazy (PEP 562): ``import fheqnn`` loads nothing heavy, and each public name
imports its own module on first use. So an encryption client (``fheqnn.FheModelClient``) or an
inference server never loads torch's training side, brevitas, ONNX or scikit-learn by accident.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it (relative to this package).
_EXPORTS = {
    "MAX_BITWIDTH_BACKWARD_COMPATIBLE": ".model.qnn_module",
    "SparseQuantNeuralNetwork": ".model.qnn_module",
    "NeuralNetClassifier": ".model.estimators",
    "NeuralNetRegressor": ".model.estimators",
    "ConvNetClassifier": ".model.conv_estimator",
    "SparseQuantConvNetwork": ".model.conv_module",
    "CompileOptions": ".compiler.options",
    "CompiledModel": ".compiler.api",
    "compile_onnx": ".compiler.api",
    "OutputSpec": ".contract",
    "ClientContract": ".contract",
    "Standardizer": ".contract",
    "FeatureRange": ".contract",
    "FheModelClient": ".runtime.client",
    "FheModelServer": ".runtime.server",
    "HttpClient": ".serving.client",
    "ArtifactError": ".runtime.artifacts",
    "EnvelopeError": ".runtime.envelope",
    "AccumulatorOverflowError": ".errors",
    "AccuracyLossError": ".errors",
    "CompileAccuracyWarning": ".errors",
    "InputRangeWarning": ".errors",
    "FheqnnError": ".errors",
    "InternalError": ".errors",
    "InvalidInputError": ".errors",
    "InvalidModelError": ".errors",
    "InvalidParameterError": ".errors",
    "NotFittedError": ".errors",
    "UnsupportedOperatorError": ".errors",
    "keep_exit_status": ".concrete_seam",
}

__all__ = [
    "MAX_BITWIDTH_BACKWARD_COMPATIBLE",
    "AccumulatorOverflowError",
    "AccuracyLossError",
    "ArtifactError",
    "ClientContract",
    "CompileAccuracyWarning",
    "CompileOptions",
    "CompiledModel",
    "ConvNetClassifier",
    "EnvelopeError",
    "FeatureRange",
    "FheModelClient",
    "FheModelServer",
    "FheqnnError",
    "HttpClient",
    "InputRangeWarning",
    "InternalError",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidParameterError",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "NotFittedError",
    "OutputSpec",
    "SparseQuantConvNetwork",
    "SparseQuantNeuralNetwork",
    "Standardizer",
    "UnsupportedOperatorError",
    "__version__",
    "compile_onnx",
    "keep_exit_status",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
