"""fheqnn: sparse quantized neural networks from training to encrypted inference on Concrete."""

from __future__ import annotations

from .compiler.api import CompiledModel, OutputSpec, compile_onnx
from .compiler.onnx_frontend import InvalidModelError, UnsupportedOperatorError
from .errors import (
    AccumulatorOverflowError,
    FheqnnError,
    InternalError,
    InvalidInputError,
    InvalidParameterError,
    NotFittedError,
)
from .model.estimators import NeuralNetClassifier, NeuralNetRegressor
from .model.qnn_module import MAX_BITWIDTH_BACKWARD_COMPATIBLE, SparseQuantNeuralNetwork
from .runtime import ArtifactError, EnvelopeError, FheModelClient, FheModelServer

__version__ = "0.1.0"

__all__ = [
    "MAX_BITWIDTH_BACKWARD_COMPATIBLE",
    "AccumulatorOverflowError",
    "ArtifactError",
    "CompiledModel",
    "EnvelopeError",
    "FheModelClient",
    "FheModelServer",
    "FheqnnError",
    "InternalError",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidParameterError",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "NotFittedError",
    "OutputSpec",
    "SparseQuantNeuralNetwork",
    "UnsupportedOperatorError",
    "__version__",
    "compile_onnx",
]
