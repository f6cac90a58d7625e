"""ONNX graph utilities of the front end: indexes, constant folding, QuantizeLinear arithmetic,
and the list of operators the front end accepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedOperatorError
from .kernels import ELEMENTWISE_KERNELS

LINEAR_OPS = ("Gemm", "MatMul")
#: Linear ops of convolutional networks, read by :mod:`fheqnn.compiler.onnx_linear`.
STRUCTURED_OPS = ("Conv", "AveragePool", "GlobalAveragePool", "BatchNormalization", "MaxPool")
QUANT_OPS = ("QuantizeLinear", "Clip", "DequantizeLinear")
PASS_THROUGH = ("Identity", "Flatten", "Reshape")
CONST_OPS = (
    "Constant",
    "Identity",
    "Cast",
    "Transpose",
    "Reshape",
    "QuantizeLinear",
    "Clip",
    "DequantizeLinear",
)


def supported_operators() -> list[str]:
    """Every ONNX op type the front end accepts, sorted."""
    return sorted(
        set(ELEMENTWISE_KERNELS)
        | set(LINEAR_OPS)
        | set(STRUCTURED_OPS)
        | set(QUANT_OPS)
        | {"Add"}
        | set(PASS_THROUGH)
        | set(CONST_OPS)
    )


INT_TYPE_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-(2**15), 2**15 - 1),
    np.dtype(np.uint16): (0, 2**16 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {','.join(node.output)}>"


def unsupported(node: onnx.NodeProto, why: str = "") -> UnsupportedOperatorError:
    detail = f": {why}" if why else ""
    return UnsupportedOperatorError(
        f"operator {node.op_type} (node {node_label(node)!r}) is not supported here{detail}. "
        f"Supported operators: {', '.join(supported_operators())}"
    )


class Graph:
    """Indexes of an ONNX graph: constants, producers, consumers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        # The legacy exporter also lists initializers as graph inputs: those are not inputs.
        self.inputs = [i for i in graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in graph.output]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self._const_cache: dict[str, np.ndarray | None] = {}

    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        out = {}
        for attr in node.attribute:
            value = onnx.helper.get_attribute_value(attr)
            out[attr.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def const(self, name: str) -> np.ndarray | None:
        """Value of a tensor computable from constants only, else None."""
        if name == "":
            return None
        if name in self.constants:
            return self.constants[name]
        if name in self._const_cache:
            return self._const_cache[name]
        value = self._fold(name)
        self._const_cache[name] = value
        return value

    def _fold(self, name: str) -> np.ndarray | None:
        node = self.producer.get(name)
        if node is None or node.op_type not in CONST_OPS:
            return None
        attrs = self.attrs(node)
        if node.op_type == "Constant":
            if "value" in attrs:
                return numpy_helper.to_array(attrs["value"])
            for key in ("value_float", "value_int"):
                if key in attrs:
                    return np.asarray(attrs[key])
            for key in ("value_floats", "value_ints"):
                if key in attrs:
                    return np.asarray(list(attrs[key]))
            return None
        args = [self.const(i) if i else None for i in node.input]
        if args[0] is None:
            return None
        x = args[0]
        if node.op_type == "Identity":
            return x
        if node.op_type == "Cast":
            return x.astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if node.op_type == "Transpose":
            return np.transpose(x, attrs.get("perm"))
        if node.op_type == "Reshape":
            return None if args[1] is None else np.reshape(x, [int(d) for d in args[1]])
        if node.op_type == "QuantizeLinear":
            zp = quantize_zero_point(node, args[2] if len(args) > 2 else None, attrs)
            return quantize_linear(x, args[1], zp, attrs.get("axis", 1))
        if node.op_type == "DequantizeLinear":
            # Only for constants such as an int32 bias; weights are read by read_weight.
            zp = args[2] if len(args) > 2 and args[2] is not None else np.int8(0)
            axis = attrs.get("axis", 1) % max(x.ndim, 1)
            scale = per_axis(args[1], x.ndim, axis).astype(np.float64)
            return (x.astype(np.float64) - per_axis(zp, x.ndim, axis)) * scale
        if node.op_type == "Clip":
            lo, hi = clip_bounds(node, args, attrs)
            return np.clip(x, lo, hi).astype(x.dtype)
        return None  # pragma: no cover


def quantize_zero_point(node: onnx.NodeProto, zp: np.ndarray | None, attrs: dict) -> np.ndarray:
    """Zero point of a QuantizeLinear, typed as its output (uint8 unless ``output_dtype`` says)."""
    for name in ("block_size", "precision"):
        if attrs.get(name, 0) not in (0, None):
            raise unsupported(node, f"the {name} attribute is not supported")
    if zp is not None:
        return np.asarray(zp)
    if attrs.get("output_dtype"):
        return np.zeros((), dtype=onnx.helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]))
    return np.uint8(0)


def clip_bounds(node: onnx.NodeProto, args: list, attrs: dict) -> tuple[Any, Any]:
    """Clip bounds from inputs (opset >= 11) or attributes (older opsets)."""
    if len(node.input) == 1:
        return attrs.get("min"), attrs.get("max")
    lo = args[1] if len(args) > 1 and args[1] is not None else None
    hi = args[2] if len(args) > 2 and args[2] is not None else None
    return lo, hi


def per_axis(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def quantize_linear(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)."""
    zp = np.asarray(zp)
    lo, hi = INT_TYPE_RANGES[zp.dtype]
    axis = axis % max(x.ndim, 1)
    # Divide in the input's own precision (float32 in practice), as onnxruntime does, so that
    # the recovered integers are exactly those the graph computes, ties included.
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    q = np.rint(x.astype(dtype) / per_axis(scale, x.ndim, axis).astype(dtype)).astype(np.float64)
    q = q + per_axis(zp, x.ndim, axis).astype(np.int64)
    return np.clip(q, lo, hi).astype(zp.dtype)
