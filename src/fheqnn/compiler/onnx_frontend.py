"""ONNX front end: a QCDQ MLP graph to our integer IR.

What the graph must look like (brevitas' QCDQ export of an MLP, any width or bit-width):

    x -> QuantizeLinear -> [Clip] -> DequantizeLinear          (input quantizer, on the client)
      -> Gemm(., DQ(W_int), bias) | MatMul(., DQ(W_int)) [+ Add(bias)]
      -> element-wise activation ops
      -> QuantizeLinear -> [Clip] -> DequantizeLinear          (next quantizer) -> next layer ...
      -> last Gemm / MatMul [+ Add] -> [element-wise ops] -> output

Integer weights are recovered exactly as the graph computes them: a constant weight passes
through QuantizeLinear (round half to even, saturate), Clip and DequantizeLinear; the integers
before DequantizeLinear are the ones that run in FHE. Bit-width, sign and narrow range of every
tensor come from the integer type of the zero point and the Clip bounds.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidModelError, UnsupportedOperatorError
from .ir import Elementwise, ElementwiseNode, Layer, Program, Quantizer
from .kernels import ELEMENTWISE_KERNELS

__all__ = [
    "ELEMENTWISE_KERNELS",
    "InvalidModelError",
    "UnsupportedOperatorError",
    "program_from_onnx",
    "supported_operators",
]


# Attributes of element-wise ops that we forward to the kernels, with their ONNX names.
_KERNEL_ATTRIBUTES = {
    "LeakyRelu": ("alpha",),
    "ThresholdedRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
    "Selu": ("alpha", "gamma"),
    "Elu": ("alpha",),
    "Celu": ("alpha",),
    "Gelu": ("approximate",),
}

_LINEAR_OPS = ("Gemm", "MatMul")
_QUANT_OPS = ("QuantizeLinear", "Clip", "DequantizeLinear")
_PASS_THROUGH = ("Identity", "Flatten")
_CONST_OPS = (
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
        | set(_LINEAR_OPS)
        | set(_QUANT_OPS)
        | {"Add"}
        | set(_PASS_THROUGH)
        | set(_CONST_OPS)
    )


_INT_TYPE_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-(2**15), 2**15 - 1),
    np.dtype(np.uint16): (0, 2**16 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {','.join(node.output)}>"


def _unsupported(node: onnx.NodeProto, why: str = "") -> UnsupportedOperatorError:
    detail = f": {why}" if why else ""
    return UnsupportedOperatorError(
        f"operator {node.op_type} (node {_node_label(node)!r}) is not supported here{detail}. "
        f"Supported operators: {', '.join(supported_operators())}"
    )


class _Graph:
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
        if node is None or node.op_type not in _CONST_OPS:
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
            zp = _quantize_zero_point(node, args[2] if len(args) > 2 else None, attrs)
            return _quantize_linear(x, args[1], zp, attrs.get("axis", 1))
        if node.op_type == "DequantizeLinear":
            # Only for constants such as an int32 bias; weights are read by read_weight.
            zp = args[2] if len(args) > 2 and args[2] is not None else np.int8(0)
            axis = attrs.get("axis", 1) % max(x.ndim, 1)
            scale = _per_axis(args[1], x.ndim, axis).astype(np.float64)
            return (x.astype(np.float64) - _per_axis(zp, x.ndim, axis)) * scale
        if node.op_type == "Clip":
            lo, hi = _clip_bounds(node, args, attrs)
            return np.clip(x, lo, hi).astype(x.dtype)
        return None  # pragma: no cover


def _quantize_zero_point(node: onnx.NodeProto, zp: np.ndarray | None, attrs: dict) -> np.ndarray:
    """Zero point of a QuantizeLinear, typed as its output (uint8 unless ``output_dtype`` says)."""
    for name in ("block_size", "precision"):
        if attrs.get(name, 0) not in (0, None):
            raise _unsupported(node, f"the {name} attribute is not supported")
    if zp is not None:
        return np.asarray(zp)
    if attrs.get("output_dtype"):
        return np.zeros((), dtype=onnx.helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]))
    return np.uint8(0)


def _clip_bounds(node: onnx.NodeProto, args: list, attrs: dict) -> tuple[Any, Any]:
    """Clip bounds from inputs (opset >= 11) or attributes (older opsets)."""
    if len(node.input) == 1:
        return attrs.get("min"), attrs.get("max")
    lo = args[1] if len(args) > 1 and args[1] is not None else None
    hi = args[2] if len(args) > 2 and args[2] is not None else None
    return lo, hi


def _per_axis(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def _quantize_linear(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)."""
    zp = np.asarray(zp)
    lo, hi = _INT_TYPE_RANGES[zp.dtype]
    axis = axis % max(x.ndim, 1)
    # Divide in the input's own precision (float32 in practice), as onnxruntime does, so that
    # the recovered integers are exactly those the graph computes, ties included.
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    q = np.rint(x.astype(dtype) / _per_axis(scale, x.ndim, axis).astype(dtype)).astype(np.float64)
    q = q + _per_axis(zp, x.ndim, axis).astype(np.int64)
    return np.clip(q, lo, hi).astype(zp.dtype)


class _Reader:
    """Walks the graph from its input and builds the IR."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.g = _Graph(model)
        self.source = source

    def only_consumer(self, tensor: str, what: str) -> onnx.NodeProto:
        consumers = self.g.consumers.get(tensor, [])
        if len(consumers) != 1:
            raise InvalidModelError(
                f"{self.source}: {what} {tensor!r} feeds {len(consumers)} nodes "
                f"({[_node_label(n) for n in consumers]}); a chain MLP feeds exactly one"
            )
        return consumers[0]

    def skip_pass_through(self, tensor: str) -> tuple[str, onnx.NodeProto]:
        node = self.only_consumer(tensor, "tensor")
        while node.op_type in _PASS_THROUGH:
            if node.op_type == "Flatten" and self.g.attrs(node).get("axis", 1) != 1:
                raise _unsupported(node, "only Flatten(axis=1) of a (batch, features) tensor")
            tensor = node.output[0]
            node = self.only_consumer(tensor, "tensor")
        return tensor, node

    # ------------------------------------------------------------------ quantizers
    def read_activation_quantizer(self, node: onnx.NodeProto) -> tuple[Quantizer, str]:
        """QuantizeLinear -> [Clip] -> DequantizeLinear on a runtime tensor."""
        if node.op_type != "QuantizeLinear":
            raise _unsupported(node, "expected a QuantizeLinear (the quantizer of this tensor)")
        scale = self.g.const(node.input[1])
        has_zp = len(node.input) > 2 and bool(node.input[2])
        zp_value = self.g.const(node.input[2]) if has_zp else None
        if has_zp and zp_value is None:
            raise _unsupported(node, "quantizer scale and zero point must be constants")
        zp = _quantize_zero_point(node, zp_value, self.g.attrs(node))
        if scale is None:
            raise _unsupported(node, "quantizer scale and zero point must be constants")
        if np.asarray(scale).size != 1 or np.asarray(zp).size != 1:
            raise _unsupported(node, "activation quantizers must be per-tensor (one scale)")
        zp = np.asarray(zp)
        if zp.dtype not in _INT_TYPE_RANGES:
            raise _unsupported(node, f"zero point of type {zp.dtype} (integers only)")
        qmin, qmax = _INT_TYPE_RANGES[zp.dtype]
        nxt = self.only_consumer(node.output[0], "quantized tensor")
        if nxt.op_type == "Clip":
            args = [None] + [self.g.const(i) if i else None for i in nxt.input[1:]]
            if any(i and a is None for i, a in zip(nxt.input[1:], args[1:], strict=True)):
                raise _unsupported(nxt, "Clip bounds of a quantizer must be constants")
            lo, hi = _clip_bounds(nxt, args, self.g.attrs(nxt))
            qmin = max(qmin, int(lo)) if lo is not None else qmin
            qmax = min(qmax, int(hi)) if hi is not None else qmax
            nxt = self.only_consumer(nxt.output[0], "quantized tensor")
        if nxt.op_type != "DequantizeLinear":
            raise _unsupported(nxt, "expected DequantizeLinear after QuantizeLinear [-> Clip]")
        d_scale = self.g.const(nxt.input[1])
        d_zp = self.g.const(nxt.input[2]) if len(nxt.input) > 2 and nxt.input[2] else np.uint8(0)
        if (
            d_scale is None
            or not np.allclose(np.asarray(d_scale, np.float64), np.asarray(scale, np.float64))
            or d_zp is None
            or int(np.asarray(d_zp)) != int(zp)
        ):
            raise _unsupported(nxt, "DequantizeLinear must use its QuantizeLinear's scale/zp")
        if float(scale) <= 0:
            raise _unsupported(node, f"quantizer scale must be > 0, got {float(scale)}")
        return Quantizer(float(scale), int(zp), qmin, qmax), nxt.output[0]

    def read_weight(self, tensor: str, layer: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        """Integer weights and their scale (per tensor or per output) of a DQ'd constant."""
        transpose = None
        node = self.g.producer.get(tensor)
        if node is not None and node.op_type == "Transpose":
            transpose = self.g.attrs(node).get("perm", [1, 0])
            node = self.g.producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear":
            raise InvalidModelError(
                f"{self.source}: the weights of layer {_node_label(layer)!r} are not quantized "
                "(expected DequantizeLinear of constant integers): fheqnn compiles QCDQ models"
            )
        w_int = self.g.const(node.input[0])
        scale = self.g.const(node.input[1])
        zp = self.g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.int8(0)
        if w_int is None or scale is None or zp is None:
            raise _unsupported(node, "weights, scale and zero point must be constants")
        if np.any(np.asarray(zp) != 0):
            raise _unsupported(node, "weight zero points must be 0 (symmetric weights)")
        if w_int.ndim != 2:
            raise _unsupported(node, f"weights must be 2-D, got shape {w_int.shape}")
        axis = self.g.attrs(node).get("axis", 1) % 2
        scale = np.asarray(scale, dtype=np.float64)
        w_scale = np.broadcast_to(_per_axis(scale, 2, axis), w_int.shape).astype(np.float64)
        w = w_int.astype(np.int64)
        if transpose is not None:
            w, w_scale = np.transpose(w, transpose), np.transpose(w_scale, transpose)
        return w, w_scale

    # ------------------------------------------------------------------ layers
    def read_linear(
        self, node: onnx.NodeProto, x: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
        """Returns (W int (out,in), per-output scale, bias, output tensor, name)."""
        if node.op_type == "Gemm":
            attrs = self.g.attrs(node)
            if attrs.get("transA", 0) != 0 or node.input[0] != x:
                raise _unsupported(node, "Gemm must take the activations as A, untransposed")
            w, w_scale = self.read_weight(node.input[1], node)
            if attrs.get("transB", 0) == 0:
                w, w_scale = w.T, w_scale.T
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            bias = np.zeros(w.shape[0])
            if len(node.input) > 2 and node.input[2]:
                c = self.g.const(node.input[2])
                if c is None:
                    raise _unsupported(node, "the Gemm bias must be a constant")
                bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],)) * beta
            out, name = node.output[0], node.name or "gemm"
        elif node.op_type == "MatMul":
            if node.input[0] != x:
                raise _unsupported(node, "MatMul must take the activations as its first input")
            w, w_scale = self.read_weight(node.input[1], node)
            w, w_scale, alpha = w.T, w_scale.T, 1.0
            bias = np.zeros(w.shape[0])
            out, name = node.output[0], node.name or "matmul"
            consumers = self.g.consumers.get(out, [])
            if len(consumers) == 1 and consumers[0].op_type == "Add":
                add = consumers[0]
                other = add.input[1] if add.input[0] == out else add.input[0]
                c = self.g.const(other)
                if c is not None and np.asarray(c).size in (1, w.shape[0]):
                    bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],))
                    out = add.output[0]
        else:
            raise _unsupported(node, "expected a linear layer (Gemm or MatMul) here")
        # A per-output weight scale factors out of the accumulator; anything else does not.
        scale_rows = w_scale[:, :1]
        if not np.allclose(w_scale, scale_rows, rtol=1e-12, atol=0):
            raise _unsupported(node, "weight scales must be per tensor or per output neuron")
        return w, scale_rows[:, 0] * alpha, np.array(bias, dtype=np.float64), out, name

    def read_activation_chain(self, start: str) -> tuple[Elementwise | None, onnx.NodeProto | None]:
        """Element-wise nodes from ``start`` up to the next QuantizeLinear or the graph output."""
        nodes: list[ElementwiseNode] = []
        constants: dict[str, np.ndarray] = {}
        produced = {start}
        frontier = start
        end_node = None
        while True:
            if frontier in self.g.outputs:
                # The network ends here, whatever else reads this tensor.
                break
            pending = [
                n
                for n in self.g.nodes
                if any(i in produced for i in n.input) and n.output[0] not in produced
            ]
            if not pending:
                break
            node = pending[0]
            if node.op_type == "QuantizeLinear" and self.g.const(node.input[0]) is None:
                if len(pending) > 1:
                    raise InvalidModelError(
                        f"{self.source}: activation branches do not all end in quantizer "
                        f"{_node_label(node)!r}: {[_node_label(n) for n in pending]}"
                    )
                end_node = node
                if node.input[0] != frontier:
                    raise InvalidModelError(
                        f"{self.source}: quantizer {_node_label(node)!r} does not quantize the end "
                        "of the activation chain"
                    )
                break
            if node.op_type not in ELEMENTWISE_KERNELS:
                raise _unsupported(node, "not an element-wise activation op")
            for inp in node.input:
                if inp and inp not in produced:
                    value = self.g.const(inp)
                    if value is None:
                        raise _unsupported(
                            node, f"input {inp!r} is neither a constant nor the chain"
                        )
                    constants[inp] = np.asarray(value, dtype=np.float64).reshape(
                        np.asarray(value).shape[-1:] if np.asarray(value).ndim else ()
                    )
            attrs = self.g.attrs(node)
            kept = tuple(
                (k, attrs[k]) for k in _KERNEL_ATTRIBUTES.get(node.op_type, ()) if k in attrs
            )
            if node.op_type == "Clip" and len(node.input) == 1:
                # opset < 11 Clip carries its bounds as attributes.
                kept = tuple((k, attrs[a]) for k, a in (("lo", "min"), ("hi", "max")) if a in attrs)
            nodes.append(
                ElementwiseNode(
                    node.op_type, _node_label(node), tuple(node.input), node.output[0], kept
                )
            )
            produced.add(node.output[0])
            frontier = node.output[0]
        if not nodes:
            return None, end_node
        chain = Elementwise(tuple(nodes), start, frontier, constants)
        return chain, end_node

    def read(self) -> Program:
        if len(self.g.inputs) != 1:
            raise InvalidModelError(
                f"{self.source}: expected one input tensor, got {[i.name for i in self.g.inputs]}"
            )
        graph_input = self.g.inputs[0]
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) != 2:
            raise InvalidModelError(
                f"{self.source}: input {graph_input.name!r} must be 2-D (batch, features), "
                f"got {len(dims)} dimensions"
            )
        if len(self.g.outputs) != 1:
            raise InvalidModelError(f"{self.source}: expected one output, got {self.g.outputs}")
        for node in self.g.nodes:
            known = node.op_type in supported_operators()
            if not known:
                raise _unsupported(node)

        _, first = self.skip_pass_through(graph_input.name)
        input_quantizer, x = self.read_activation_quantizer(first)
        in_range = input_quantizer.range
        in_zp = int(input_quantizer.zero_point)
        in_scale = float(input_quantizer.scale)
        layers: list[Layer] = []
        while True:
            x, node = self.skip_pass_through(x)
            w, w_scale, bias, out, name = self.read_linear(node, x)
            chain, quant_node = self.read_activation_chain(out)
            # The accumulator sums w * q; the real input is (q - zp) * s, so the zero point
            # contributes a constant per neuron, folded into the lookup as an offset.
            offset = -in_zp * w.sum(axis=1)
            acc_scale = w_scale * in_scale
            if quant_node is None:
                layers.append(Layer(name, w, in_range, offset, acc_scale, bias, chain, None))
                break
            out_q, x = self.read_activation_quantizer(quant_node)
            layers.append(Layer(name, w, in_range, offset, acc_scale, bias, chain, out_q))
            in_range, in_zp, in_scale = out_q.range, int(out_q.zero_point), float(out_q.scale)
        for prev, nxt in itertools.pairwise(layers):
            if prev.n_outputs != nxt.n_inputs:
                raise InvalidModelError(
                    f"{self.source}: layer {prev.name!r} has {prev.n_outputs} outputs but "
                    f"{nxt.name!r} takes {nxt.n_inputs} inputs"
                )
        n_features = dims[1].dim_value
        if n_features and n_features != layers[0].n_inputs:
            raise InvalidModelError(
                f"{self.source}: input has {n_features} features but {layers[0].name!r} takes "
                f"{layers[0].n_inputs}"
            )
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            layers = [
                Layer(
                    f"{layer.name}_{i}",
                    layer.weight,
                    layer.input_range,
                    layer.offset,
                    layer.acc_scale,
                    layer.bias,
                    layer.activation,
                    layer.output_quantizer,
                )
                for i, layer in enumerate(layers)
            ]
        return Program(input_quantizer, tuple(layers), source=self.source)


def load_onnx(model: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Load and check an ONNX model (a path, a ModelProto, or its serialized bytes).

    Returns:
        The model and a label for messages.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise InvalidModelError(
                f"the bytes given ({len(model)}) are not a serialized ONNX model: {exc}"
            ) from exc
    if isinstance(model, onnx.ModelProto):
        source = model.graph.name or "<onnx model>"
    elif not isinstance(model, str | Path):
        raise InvalidModelError(
            f"expected an ONNX file path, an onnx.ModelProto or its serialized bytes, got "
            f"{type(model).__name__}"
        )
    else:
        path = Path(model)
        if not path.is_file():
            raise InvalidModelError(f"ONNX file {str(path)!r} does not exist")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise InvalidModelError(f"cannot read ONNX file {str(path)!r}: {exc}") from exc
        source = str(path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"{source} is not a valid ONNX model: {exc}") from exc
    return model, source


def program_from_onnx(model: str | Path | onnx.ModelProto) -> Program:
    """Read a QCDQ MLP ONNX model (file or ModelProto) into our integer IR."""
    proto, source = load_onnx(model)
    return _Reader(proto, source).read()
