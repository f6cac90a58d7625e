"""Element-wise float kernels of activation chains, keyed by ONNX op type.

The IR names a kernel by its op type and looks it up here, so a program, its serialization and
its interpreter stand on numpy alone (no ONNX reader needed to build, save or run one). A chain
runs at compile time (it becomes part of a hidden layer's table lookup) and, for the output
layer, on the client in the clear.

scipy is imported only by the kernels that need it (sigmoid, erf, GELU), so that a client whose
output layer has no such activation never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _special():
    from scipy import special

    return special


def _clip(x, lo=None, hi=None, **_):
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    return np.clip(x, lo, hi)


def _selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return gamma * np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))


def _celu(x, alpha=1.0):
    return np.maximum(0, x) + np.minimum(0, alpha * (np.exp(np.minimum(x, 0) / alpha) - 1))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _special().erf(x / math.sqrt(2)))


def _hard_sigmoid(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0, 1)


def _softplus(x):
    return np.logaddexp(0, x)


ELEMENTWISE_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "Relu": lambda x: np.maximum(x, 0),
    "LeakyRelu": lambda x, alpha=0.01: np.where(x >= 0, x, alpha * x),
    "PRelu": lambda x, slope: np.where(x >= 0, x, slope * x),
    "ThresholdedRelu": lambda x, alpha=1.0: np.where(x > alpha, x, 0.0),
    "Sigmoid": lambda x: _special().expit(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda x: x * _hard_sigmoid(x, 1 / 6, 0.5),
    "Tanh": np.tanh,
    "Selu": _selu,
    "Elu": _elu,
    "Celu": _celu,
    "Gelu": _gelu,
    "Softplus": _softplus,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Mish": lambda x: x * np.tanh(_softplus(x)),
    "Erf": lambda x: _special().erf(x),
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Abs": np.abs,
    "Neg": np.negative,
    "Sign": np.sign,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,
    "Reciprocal": lambda x: 1.0 / x,
    "Identity": lambda x: x,
    "Clip": _clip,
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": lambda *xs: np.maximum.reduce(np.broadcast_arrays(*xs)),
    "Min": lambda *xs: np.minimum.reduce(np.broadcast_arrays(*xs)),
}


def kernel(op_type: str) -> Callable[..., np.ndarray]:
    """The numpy kernel of an element-wise op type.

    Raises:
        KeyError: no kernel of that name (callers turn it into their own error).
    """
    return ELEMENTWISE_KERNELS[op_type]
