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
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import InvalidModelError, UnsupportedOperatorError
from .ir import Elementwise, ElementwiseNode, Layer, Program, Quantizer
from .kernels import ELEMENTWISE_KERNELS
from .onnx_graph import (
    INT_TYPE_RANGES,
    clip_bounds,
    node_label,
    quantize_zero_point,
    supported_operators,
    unsupported,
)
from .onnx_linear import LinearReader

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


def _chain_constant(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A constant of an activation chain in the layout the chain runs on: a scalar, or one
    value per output of a flat row (a per-channel constant of image rows repeated over its
    channel's positions)."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return value
    if len(shape) <= 1 or value.size == 1:
        return value.reshape(value.shape[-1:])
    if value.ndim == len(shape) + 1:  # with the batch axis
        value = value.reshape(value.shape[1:])
    return np.broadcast_to(value, shape).reshape(-1)


class _Reader(LinearReader):
    """Walks the graph from its input and builds the IR."""

    # ------------------------------------------------------------------ quantizers
    def read_activation_quantizer(self, node: onnx.NodeProto) -> tuple[Quantizer, str]:
        """QuantizeLinear -> [Clip] -> DequantizeLinear on a runtime tensor."""
        if node.op_type != "QuantizeLinear":
            raise unsupported(node, "expected a QuantizeLinear (the quantizer of this tensor)")
        scale = self.g.const(node.input[1])
        has_zp = len(node.input) > 2 and bool(node.input[2])
        zp_value = self.g.const(node.input[2]) if has_zp else None
        if has_zp and zp_value is None:
            raise unsupported(node, "quantizer scale and zero point must be constants")
        zp = quantize_zero_point(node, zp_value, self.g.attrs(node))
        if scale is None:
            raise unsupported(node, "quantizer scale and zero point must be constants")
        if np.asarray(scale).size != 1 or np.asarray(zp).size != 1:
            raise unsupported(node, "activation quantizers must be per-tensor (one scale)")
        zp = np.asarray(zp)
        if zp.dtype not in INT_TYPE_RANGES:
            raise unsupported(node, f"zero point of type {zp.dtype} (integers only)")
        qmin, qmax = INT_TYPE_RANGES[zp.dtype]
        nxt = self.only_consumer(node.output[0], "quantized tensor")
        if nxt.op_type == "Clip":
            args = [None] + [self.g.const(i) if i else None for i in nxt.input[1:]]
            if any(i and a is None for i, a in zip(nxt.input[1:], args[1:], strict=True)):
                raise unsupported(nxt, "Clip bounds of a quantizer must be constants")
            lo, hi = clip_bounds(nxt, args, self.g.attrs(nxt))
            qmin = max(qmin, int(lo)) if lo is not None else qmin
            qmax = min(qmax, int(hi)) if hi is not None else qmax
            nxt = self.only_consumer(nxt.output[0], "quantized tensor")
        if nxt.op_type != "DequantizeLinear":
            raise unsupported(nxt, "expected DequantizeLinear after QuantizeLinear [-> Clip]")
        d_scale = self.g.const(nxt.input[1])
        d_zp = self.g.const(nxt.input[2]) if len(nxt.input) > 2 and nxt.input[2] else np.uint8(0)
        if (
            d_scale is None
            or not np.allclose(np.asarray(d_scale, np.float64), np.asarray(scale, np.float64))
            or d_zp is None
            or int(np.asarray(d_zp)) != int(zp)
        ):
            raise unsupported(nxt, "DequantizeLinear must use its QuantizeLinear's scale/zp")
        if float(scale) <= 0:
            raise unsupported(node, f"quantizer scale must be > 0, got {float(scale)}")
        return Quantizer(float(scale), int(zp), qmin, qmax), nxt.output[0]

    # ------------------------------------------------------------------ activations
    def read_activation_chain(
        self, start: str, shape: tuple[int, ...] = ()
    ) -> tuple[Elementwise | None, onnx.NodeProto | None, tuple[int, ...]]:
        """Element-wise nodes from ``start`` (rows of ``shape``) up to the next QuantizeLinear
        or the graph output; returns the chain, that quantizer and the rows' shape there."""
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
                        f"{node_label(node)!r}: {[node_label(n) for n in pending]}"
                    )
                end_node = node
                if node.input[0] != frontier:
                    raise InvalidModelError(
                        f"{self.source}: quantizer {node_label(node)!r} does not quantize the end "
                        "of the activation chain"
                    )
                break
            if node.op_type in ("Flatten", "Reshape"):
                # Rows stay flat in C order: a reshape between the activation and its quantizer
                # (brevitas puts nn.Flatten there) moves no value.
                shape = self.reshaped(node, shape)
                nodes.append(
                    ElementwiseNode("Identity", node_label(node), node.input[:1], node.output[0])
                )
                produced.add(node.output[0])
                frontier = node.output[0]
                continue
            if node.op_type not in ELEMENTWISE_KERNELS:
                raise unsupported(node, "not an element-wise activation op")
            for inp in node.input:
                if inp and inp not in produced:
                    value = self.g.const(inp)
                    if value is None:
                        raise unsupported(
                            node, f"input {inp!r} is neither a constant nor the chain"
                        )
                    try:
                        constants[inp] = _chain_constant(value, shape)
                    except ValueError as exc:
                        raise unsupported(
                            node, f"constant {inp!r} does not broadcast to rows {shape}"
                        ) from exc
            attrs = self.g.attrs(node)
            kept = tuple(
                (k, attrs[k]) for k in _KERNEL_ATTRIBUTES.get(node.op_type, ()) if k in attrs
            )
            if node.op_type == "Clip" and len(node.input) == 1:
                # opset < 11 Clip carries its bounds as attributes.
                kept = tuple((k, attrs[a]) for k, a in (("lo", "min"), ("hi", "max")) if a in attrs)
            nodes.append(
                ElementwiseNode(
                    node.op_type, node_label(node), tuple(node.input), node.output[0], kept
                )
            )
            produced.add(node.output[0])
            frontier = node.output[0]
        if not nodes:
            return None, end_node, shape
        chain = Elementwise(tuple(nodes), start, frontier, constants)
        return chain, end_node, shape

    def read(self) -> Program:
        if len(self.g.inputs) != 1:
            raise InvalidModelError(
                f"{self.source}: expected one input tensor, got {[i.name for i in self.g.inputs]}"
            )
        graph_input = self.g.inputs[0]
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if len(dims) not in (2, 4) or (len(dims) == 4 and not all(dims[1:])):
            raise InvalidModelError(
                f"{self.source}: input {graph_input.name!r} must be (batch, features) or "
                f"(batch, channels, height, width) with known sizes, got {len(dims)} dimensions "
                f"{dims}"
            )
        if len(self.g.outputs) != 1:
            raise InvalidModelError(f"{self.source}: expected one output, got {self.g.outputs}")
        for node in self.g.nodes:
            known = node.op_type in supported_operators()
            if not known:
                raise unsupported(node)

        # An unknown feature count (0) is taken from the first layer's weights.
        shape: tuple[int, ...] = tuple(dims[1:]) if dims[1] else ()
        _, first, shape = self.skip_pass_through(graph_input.name, shape)
        input_quantizer, x = self.read_activation_quantizer(first)
        in_range = input_quantizer.range
        in_zp = int(input_quantizer.zero_point)
        in_scale = float(input_quantizer.scale)
        layers: list[Layer] = []
        while True:
            part, out, shape = self.read_linear_part(x, shape)
            assert part.scale is not None and part.bias is not None
            w = part.weight()
            chain, quant_node, shape = self.read_activation_chain(out, shape)
            # The accumulator sums w * q; the real input is (q - zp) * s, so the zero point
            # contributes a constant per neuron, folded into the lookup as an offset.
            offset = -in_zp * w.sum(axis=1)
            acc_scale = part.scale * in_scale
            out_q = None
            if quant_node is not None:
                out_q, x = self.read_activation_quantizer(quant_node)
            layers.append(
                Layer(
                    part.name,
                    w,
                    in_range,
                    offset,
                    acc_scale,
                    part.bias,
                    chain,
                    out_q,
                    plan=part.plan(),
                    input_pool=part.input_pool,
                )
            )
            if out_q is None:
                break
            # The next layer's inputs are this layer's table outputs: their hull, which is
            # tighter than the quantizer's range after a ReLU (Layer.lookup_range).
            in_range = layers[-1].lookup_range()
            in_zp, in_scale = int(out_q.zero_point), float(out_q.scale)
        for prev, nxt in itertools.pairwise(layers):
            if prev.n_outputs != nxt.n_inputs:
                raise InvalidModelError(
                    f"{self.source}: layer {prev.name!r} has {prev.n_outputs} outputs but "
                    f"{nxt.name!r} takes {nxt.n_inputs} inputs"
                )
        n_features = int(np.prod(dims[1:]))
        if n_features and n_features != layers[0].n_inputs:
            raise InvalidModelError(
                f"{self.source}: input has {n_features} features but {layers[0].name!r} takes "
                f"{layers[0].n_inputs}"
            )
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            layers = [replace(layer, name=f"{layer.name}_{i}") for i, layer in enumerate(layers)]
        input_shape = tuple(dims[1:]) if len(dims) == 4 else None
        return Program(input_quantizer, tuple(layers), source=self.source, input_shape=input_shape)


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
