"""fheqnn: sparse quantized neural networks from training to encrypted inference on Concrete."""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "MAX_BITWIDTH_BACKWARD_COMPATIBLE",
    "AccumulatorOverflowError",
    "FheqnnError",
    "InternalError",
    "InvalidInputError",
    "InvalidParameterError",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "NotFittedError",
    "SparseQuantNeuralNetwork",
    "__version__",
]
