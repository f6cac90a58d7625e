"""ONNX front end, linear part: what lies between two quantizers before the activation.

Between a DequantizeLinear and the element-wise activation that ends a layer, a brevitas
export holds linear ops on the dequantized values: ``Gemm`` or ``MatMul`` (+ ``Add`` of a
bias), ``Conv``, ``AveragePool``, ``GlobalAveragePool``, ``BatchNormalization``, and shape
ops (``Flatten``, ``Reshape``, ``Identity``). Their composition is one affine map of the
layer's input integers ``q``::

    pre-activation = scale * (W @ q) + bias        (per output: scale, bias)

with ``W`` an integer matrix, the composition of each op's integer map: the weights'
DequantizeLinear scales, a pool's division and a batch normalization's factor are real
factors per output, carried in ``scale`` (the lookup that follows applies them exactly, so
no division happens under encryption). A factor that does not stay per output (an op that
mixes values of different scales) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import InvalidModelError
from .linear_ops import Conv2d, Dense, LinearOp, LinearPlan, MaxPool2d, compose, sum_pool
from .onnx_graph import PASS_THROUGH, Graph, node_label, per_axis, unsupported

#: Ops a layer's linear part may hold besides the shape ops.
_LAYER_OPS = (
    "Gemm",
    "MatMul",
    "Conv",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "MaxPool",
)


@dataclass
class LinearPart:
    """The composition of a layer's linear ops, built op by op (:meth:`add`).

    Attributes:
        ops: the integer maps, in order.
        scale: per output of the last op, the real value of one unit of ``W @ q`` (before the
            layer's input scale).
        bias: per output of the last op, the real constant added.
        nodes: the ONNX nodes of ``ops``.
        input_pool: a max pool of the layer's input integers before ``ops`` (``None``: none).
    """

    ops: list[LinearOp] = field(default_factory=list)
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    input_pool: MaxPool2d | None = None

    @property
    def name(self) -> str:
        """The layer's name: its first Conv, Gemm or MatMul node's (a pool's without one)."""
        main = [n for n in self.nodes if n.op_type in ("Conv", "Gemm", "MatMul")] or self.nodes
        return (main[0].name or main[0].op_type.lower()) if main else "layer"

    def add(self, op: LinearOp, scale: np.ndarray, bias: np.ndarray, node: onnx.NodeProto) -> None:
        """Follow the part with ``op`` computing ``scale * (op @ x) + bias`` on real values."""
        if self.scale is None or self.bias is None:
            self.scale, self.bias = np.ones(op.n_in), np.zeros(op.n_in)
        if self.scale.size != op.n_in:
            raise InvalidModelError(
                f"{node_label(node)!r} takes {op.n_in} values per row but gets {self.scale.size}"
            )
        matrix = op.matrix()
        support = matrix != 0
        hi = np.where(support, self.scale[None, :], -np.inf).max(axis=1, initial=-np.inf)
        lo = np.where(support, self.scale[None, :], np.inf).min(axis=1, initial=np.inf)
        empty = ~support.any(axis=1)
        if not np.all(empty | np.isclose(hi, lo, rtol=1e-9, atol=0.0)):
            raise unsupported(
                node,
                "it sums values of different scales (per-channel weight scales, a batch "
                "normalization, or an average pool with count_include_pad=0 and padding, before "
                "an op that mixes their outputs): no integer map computes it; quantize between "
                "them, or use per-tensor weight scales and count_include_pad=1",
            )
        carried = np.where(empty, 1.0, hi)
        self.bias = scale * (matrix.astype(np.float64) @ self.bias) + bias
        self.scale = scale * carried
        self.ops.append(op)
        self.nodes.append(node)

    def rescale(self, factor: np.ndarray, shift: np.ndarray) -> None:
        """Follow the part with the per-output affine map ``factor * y + shift``."""
        assert self.scale is not None and self.bias is not None
        self.scale = self.scale * factor
        self.bias = self.bias * factor + shift

    def weight(self) -> np.ndarray:
        """The integer matrix ``W`` of the whole part."""
        return compose(tuple(self.ops))

    def plan(self) -> LinearPlan | None:
        """How the circuit computes it: ``None`` (one dense product) unless a convolution or
        pool is part of it."""
        if all(isinstance(op, Dense) for op in self.ops):
            return None
        return LinearPlan(tuple(self.ops))


def _rows(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def per_position(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel values (the first axis of ``shape``) repeated over each channel's
    positions, in the flat C order of a row of ``shape``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.repeat(np.broadcast_to(values, (shape[0],)), _rows(shape[1:]))


class LinearReader:
    """Reads the linear part of layers (and the shape ops around quantizers)."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.g = Graph(model)
        self.source = source

    def only_consumer(self, tensor: str, what: str) -> onnx.NodeProto:
        consumers = self.g.consumers.get(tensor, [])
        if len(consumers) != 1:
            raise InvalidModelError(
                f"{self.source}: {what} {tensor!r} feeds {len(consumers)} nodes "
                f"({[node_label(n) for n in consumers]}); fheqnn compiles chains, where each "
                "tensor feeds exactly one node (residual additions are not supported yet)"
            )
        return consumers[0]

    def reshaped(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The row shape after a shape op (rows stay flat in C order: no data moves)."""
        if node.op_type == "Identity":
            return shape
        if node.op_type == "Flatten":
            if self.g.attrs(node).get("axis", 1) != 1:
                raise unsupported(node, "only Flatten(axis=1), which keeps the batch axis")
            return (_rows(shape),)
        target = self.g.const(node.input[1])
        if target is None:
            raise unsupported(
                node,
                "its target shape must be a constant: flatten with nn.Flatten or "
                "torch.flatten(x, 1), not x.view(x.size(0), -1), whose shape is computed",
            )
        dims = [int(d) for d in np.asarray(target).reshape(-1)]
        if not dims or dims[0] not in (0, -1) or self.g.attrs(node).get("allowzero", 0):
            raise unsupported(node, f"shape {dims}: the batch axis must stay first (0 or -1)")
        full = (0, *shape)
        new = [full[i] if d == 0 and i < len(full) else d for i, d in enumerate(dims)][1:]
        if new.count(-1) > 1 or any(d < -1 or d == 0 for d in new):
            raise unsupported(node, f"shape {dims} is not a reshape of rows {shape}")
        if -1 in new:
            known = _rows(tuple(d for d in new if d != -1))
            if known == 0 or _rows(shape) % known:
                raise unsupported(node, f"shape {dims} is not a reshape of rows {shape}")
            new[new.index(-1)] = _rows(shape) // known
        if _rows(tuple(new)) != _rows(shape):
            raise unsupported(node, f"shape {dims} is not a reshape of rows {shape}")
        return tuple(new)

    def skip_pass_through(
        self, tensor: str, shape: tuple[int, ...]
    ) -> tuple[str, onnx.NodeProto, tuple[int, ...]]:
        """The first node after shape ops, the tensor it reads and that tensor's row shape."""
        node = self.only_consumer(tensor, "tensor")
        while node.op_type in PASS_THROUGH:
            shape = self.reshaped(node, shape)
            tensor = node.output[0]
            node = self.only_consumer(tensor, "tensor")
        return tensor, node, shape

    # ------------------------------------------------------------------ weights
    def read_weight(self, tensor: str, layer: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        """Integer weights and their scale, broadcast to the weights' shape, of a DQ'd constant
        (2-D for Gemm/MatMul, 4-D for Conv)."""
        transpose = None
        node = self.g.producer.get(tensor)
        if node is not None and node.op_type == "Transpose":
            transpose = self.g.attrs(node).get("perm", [1, 0])
            node = self.g.producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear":
            raise InvalidModelError(
                f"{self.source}: the weights of layer {node_label(layer)!r} are not quantized "
                "(expected DequantizeLinear of constant integers): fheqnn compiles QCDQ models"
            )
        w_int = self.g.const(node.input[0])
        scale = self.g.const(node.input[1])
        zp = self.g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.int8(0)
        if w_int is None or scale is None or zp is None:
            raise unsupported(node, "weights, scale and zero point must be constants")
        if np.any(np.asarray(zp) != 0):
            raise unsupported(node, "weight zero points must be 0 (symmetric weights)")
        ndim = 4 if layer.op_type == "Conv" else 2
        if w_int.ndim != ndim:
            raise unsupported(node, f"weights must be {ndim}-D, got shape {w_int.shape}")
        axis = self.g.attrs(node).get("axis", 1) % ndim
        scale = np.asarray(scale, dtype=np.float64)
        w_scale = np.broadcast_to(per_axis(scale, ndim, axis), w_int.shape).astype(np.float64)
        w = w_int.astype(np.int64)
        if transpose is not None:
            w, w_scale = np.transpose(w, transpose), np.transpose(w_scale, transpose)
        return w, w_scale

    @staticmethod
    def per_output_scale(node: onnx.NodeProto, w_scale: np.ndarray) -> np.ndarray:
        """The weights' scale as one factor per output (the first axis), or a refusal."""
        flat = w_scale.reshape(w_scale.shape[0], -1)
        if not np.allclose(flat, flat[:, :1], rtol=1e-12, atol=0):
            raise unsupported(node, "weight scales must be per tensor or per output neuron")
        return flat[:, 0]

    def read_linear(
        self, node: onnx.NodeProto, x: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
        """Returns (W int (out,in), per-output scale, bias, output tensor, name)."""
        if node.op_type == "Gemm":
            attrs = self.g.attrs(node)
            if attrs.get("transA", 0) != 0 or node.input[0] != x:
                raise unsupported(node, "Gemm must take the activations as A, untransposed")
            w, w_scale = self.read_weight(node.input[1], node)
            if attrs.get("transB", 0) == 0:
                w, w_scale = w.T, w_scale.T
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            bias = np.zeros(w.shape[0])
            if len(node.input) > 2 and node.input[2]:
                c = self.g.const(node.input[2])
                if c is None:
                    raise unsupported(node, "the Gemm bias must be a constant")
                bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],)) * beta
            out, name = node.output[0], node.name or "gemm"
        elif node.op_type == "MatMul":
            if node.input[0] != x:
                raise unsupported(node, "MatMul must take the activations as its first input")
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
            raise unsupported(node, "expected a linear layer (Gemm or MatMul) here")
        # A per-output weight scale factors out of the accumulator; anything else does not.
        scale = self.per_output_scale(node, w_scale)
        return w, scale * alpha, np.array(bias, dtype=np.float64), out, name

    # ------------------------------------------------------------------ convolutional ops
    def _spatial(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> dict:
        """Strides, pads and dilations of a Conv or AveragePool on ``(C, H, W)`` rows."""
        if len(shape) != 3:
            raise unsupported(
                node,
                f"it needs (channels, height, width) rows, got rows of shape {shape} (2-D "
                "convolutions and pools only)",
            )
        attrs = self.g.attrs(node)
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise unsupported(node, f"auto_pad={attrs['auto_pad']}: give explicit pads")
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        if attrs.get("auto_pad") == "VALID":
            pads = (0, 0, 0, 0)
        return {
            "strides": tuple(attrs.get("strides", (1, 1))),
            "pads": pads,
            "dilations": tuple(attrs.get("dilations", (1, 1))),
        }

    def read_conv(
        self, node: onnx.NodeProto, x: str, shape: tuple[int, ...]
    ) -> tuple[Conv2d, np.ndarray, np.ndarray]:
        """A Conv node: its integer map, and per output its scale and bias."""
        if node.input[0] != x:
            raise unsupported(node, "Conv must take the activations as its first input")
        spatial = self._spatial(node, shape)
        kernel, w_scale = self.read_weight(node.input[1], node)
        scale = self.per_output_scale(node, w_scale)
        attrs = self.g.attrs(node)
        if tuple(attrs.get("kernel_shape", kernel.shape[2:])) != kernel.shape[2:]:
            raise unsupported(node, "kernel_shape does not match the weights")
        try:
            op = Conv2d(
                kernel, shape, group=int(attrs.get("group", 1)), name=node_label(node), **spatial
            )
        except ValueError as exc:
            raise unsupported(node, str(exc)) from exc
        bias = np.zeros(kernel.shape[0])
        if len(node.input) > 2 and node.input[2]:
            c = self.g.const(node.input[2])
            if c is None:
                raise unsupported(node, "the Conv bias must be a constant")
            bias = np.asarray(c, dtype=np.float64).reshape(-1)
        out = op.out_shape
        return op, per_position(scale, out), per_position(bias, out)

    def read_pool(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[Conv2d, np.ndarray]:
        """An AveragePool or GlobalAveragePool: a sum pool, and per output its divisor's
        inverse (counting only the inputs inside the image unless ``count_include_pad``)."""
        if node.op_type == "GlobalAveragePool":
            if len(shape) != 3:
                raise unsupported(node, f"it needs (C, H, W) rows, got rows of shape {shape}")
            op = sum_pool(shape, shape[1:], name=node_label(node))
            return op, np.full(op.n_out, 1.0 / _rows(shape[1:]))
        attrs = self.g.attrs(node)
        spatial = self._spatial(node, shape)
        if attrs.get("ceil_mode", 0):
            raise unsupported(node, "ceil_mode=1 is not supported")
        try:
            op = sum_pool(shape, tuple(attrs["kernel_shape"]), name=node_label(node), **spatial)
        except ValueError as exc:
            raise unsupported(node, str(exc)) from exc
        if attrs.get("count_include_pad", 0) or not any(spatial["pads"]):
            count = np.full(op.n_out, float(np.prod(attrs["kernel_shape"])))
        else:
            count = op.apply(np.ones((1, op.n_in), dtype=np.int64))[0].astype(np.float64)
        return op, 1.0 / count

    def read_max_pool(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> MaxPool2d:
        """A MaxPool node without padding."""
        spatial = self._spatial(node, shape)
        attrs = self.g.attrs(node)
        if any(spatial["pads"]):
            raise unsupported(node, "padded max pooling is not supported (give pads 0)")
        if attrs.get("ceil_mode", 0):
            raise unsupported(node, "ceil_mode=1 is not supported")
        if len(node.output) > 1 and node.output[1]:
            raise unsupported(node, "its Indices output is not supported")
        try:
            return MaxPool2d(
                shape,
                tuple(attrs["kernel_shape"]),
                spatial["strides"],
                spatial["dilations"],
                node_label(node),
            )
        except ValueError as exc:
            raise unsupported(node, str(exc)) from exc

    def read_batchnorm(
        self, node: onnx.NodeProto, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """An inference BatchNormalization as a per-output factor and shift."""
        attrs = self.g.attrs(node)
        if attrs.get("training_mode", 0):
            raise unsupported(node, "export the network in eval mode (training_mode=1)")
        values = [self.g.const(name) for name in node.input[1:5]]
        if len(values) != 4 or any(v is None for v in values):
            raise unsupported(node, "its scale, bias, mean and variance must be constants")
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
        if any(v.size not in (1, shape[0]) for v in (gamma, beta, mean, var)):
            raise unsupported(
                node, f"its parameters do not have one value per channel of rows {shape}"
            )
        factor = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        return per_position(factor, shape), per_position(beta - mean * factor, shape)

    # ------------------------------------------------------------------ the whole part
    def read_linear_part(
        self, x: str, shape: tuple[int, ...]
    ) -> tuple[LinearPart, str, tuple[int, ...]]:
        """The linear ops from tensor ``x`` (rows of ``shape``) up to the first node that is
        not one (the activation, a quantizer, or the graph's output).

        Returns:
            The composed part, the tensor it ends on, and that tensor's row shape.
        """
        part = LinearPart()
        while x not in self.g.outputs:
            consumers = self.g.consumers.get(x, [])
            if len(consumers) != 1 and not part.ops:
                self.only_consumer(x, "tensor")  # a layer's input feeds one node: raises
            if len(consumers) != 1 or consumers[0].op_type not in (*_LAYER_OPS, *PASS_THROUGH):
                break
            node = consumers[0]
            if node.op_type in PASS_THROUGH:
                shape = self.reshaped(node, shape)
                x = node.output[0]
            elif node.op_type in ("Gemm", "MatMul"):
                if len(shape) > 1:
                    raise unsupported(node, f"it needs flat rows, got rows of shape {shape}")
                w, scale, bias, x, _ = self.read_linear(node, x)
                part.add(Dense(w), scale, bias, node)
                shape = (w.shape[0],)
            elif node.op_type == "Conv":
                op, scale, bias = self.read_conv(node, x, shape)
                part.add(op, scale, bias, node)
                x, shape = node.output[0], op.out_shape
            elif node.op_type == "MaxPool":
                if part.ops or part.input_pool is not None:
                    raise unsupported(
                        node,
                        "a max pool is compiled on a quantizer's output only (right after "
                        "QuantizeLinear -> DequantizeLinear, as brevitas exports a MaxPool2d "
                        "after a quantized activation)",
                    )
                part.input_pool = self.read_max_pool(node, shape)
                x, shape = node.output[0], part.input_pool.out_shape
            elif node.op_type == "BatchNormalization":
                if not part.ops:
                    raise unsupported(node, "a batch normalization must follow a linear op")
                part.rescale(*self.read_batchnorm(node, shape))
                x = node.output[0]
            else:
                op, scale = self.read_pool(node, shape)
                part.add(op, scale, np.zeros(op.n_out), node)
                x, shape = node.output[0], op.out_shape
        if not part.ops:
            where = self.g.consumers.get(x, [])
            if where:
                raise unsupported(where[0], "expected a linear layer (Gemm, MatMul or Conv) here")
            raise InvalidModelError(
                f"{self.source}: expected a linear layer after tensor {x!r}, found the output"
            )
        return part, x, shape
