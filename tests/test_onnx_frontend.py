"""ONNX front end: hand-built QCDQ graphs lowered to the integer IR, checked against onnxruntime.

Every model here is built node by node with ``onnx.helper`` so that each form the front end reads
(weight paths, quantizer ranges, linear forms, activation chains, error cases) is exercised on
its own. onnxruntime is the float oracle; it runs with graph optimizations disabled, because its
QDQ fusions re-quantize float biases to int32 and would no longer compute the graph as written.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fheqnn
import fheqnn.model.export
from fheqnn.compiler.ir import Program
from fheqnn.compiler.onnx_frontend import (
    ELEMENTWISE_KERNELS,
    InvalidModelError,
    UnsupportedOperatorError,
    program_from_onnx,
    supported_operators,
)
from fheqnn.intervals import IntRange

N_IN, N_HIDDEN, N_OUT = 6, 8, 4
N_ROWS = 50
# float64 interpreter against onnxruntime's float32 arithmetic.
RTOL = ATOL = 1e-5
# Scales of the hand-built MLPs. Input 0.3 and weights 0.15 give accumulator steps of 0.045;
# the hidden scale must not be a simple rational multiple of that (0.11 is: 11 * 0.045 / 0.11 =
# 4.5 is an exact real tie that float32 and float64 round to different levels when the bias is
# zero). With 0.113, 0.045 * acc / 0.113 is never a half-integer.
HIDDEN_SCALE = 0.113


# ----------------------------------------------------------------------------- graph building


class GraphBuilder:
    """A tiny helper over onnx.helper: named constants and nodes, QCDQ blocks, a 2-D input."""

    def __init__(self, n_in: int = N_IN, input_name: str = "x") -> None:
        self.n_in = n_in
        self.input_name = input_name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: np.ndarray | float, stem: str = "c") -> str:
        name = self._fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self._fresh(op.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def qdq(
        self,
        x: str,
        scale: float,
        zp: np.integer | None = None,
        clip: tuple[int, int] | None = None,
        stem: str = "act",
    ) -> str:
        """QuantizeLinear -> [Clip] -> DequantizeLinear on a runtime tensor (int8 zp 0 default)."""
        zp = np.int8(0) if zp is None else zp
        s = self.const(np.float32(scale), f"{stem}_scale")
        z = self.const(zp, f"{stem}_zp")
        q = self.node("QuantizeLinear", [x, s, z], name=self._fresh(f"{stem}_quant"))
        if clip is not None:
            lo = self.const(np.asarray(clip[0], dtype=zp.dtype), f"{stem}_lo")
            hi = self.const(np.asarray(clip[1], dtype=zp.dtype), f"{stem}_hi")
            q = self.node("Clip", [q, lo, hi], name=self._fresh(f"{stem}_clip"))
        return self.node("DequantizeLinear", [q, s, z], name=self._fresh(f"{stem}_dequant"))

    def int_weight(
        self,
        w_int: np.ndarray,
        scale: float | np.ndarray,
        clip: tuple[int, int] | None = (-4, 3),
        axis: int | None = None,
        zp: np.ndarray | None = None,
    ) -> str:
        """Constant int8 weights -> [Clip] -> DequantizeLinear."""
        w = self.const(np.asarray(w_int, dtype=np.int8), "w_int")
        if clip is not None:
            lo, hi = self.const(np.int8(clip[0]), "w_lo"), self.const(np.int8(clip[1]), "w_hi")
            w = self.node("Clip", [w, lo, hi], name=self._fresh("w_clip"))
        s = self.const(np.asarray(scale, dtype=np.float32), "w_scale")
        zp = np.zeros(np.shape(scale), np.int8) if zp is None else zp
        z = self.const(np.asarray(zp, dtype=np.int8), "w_zp")
        attrs = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [w, s, z], name=self._fresh("w_dequant"), **attrs)

    def float_weight(
        self,
        w: np.ndarray,
        scale: float | np.ndarray,
        clip: tuple[int, int] = (-4, 3),
        axis: int | None = None,
    ) -> str:
        """Float weights -> QuantizeLinear -> Clip -> DequantizeLinear (brevitas' QCDQ form)."""
        wf = self.const(np.asarray(w, dtype=np.float32), "w_float")
        s = self.const(np.asarray(scale, dtype=np.float32), "w_scale")
        z = self.const(np.zeros(np.shape(scale), np.int8), "w_zp")
        attrs = {} if axis is None else {"axis": axis}
        q = self.node("QuantizeLinear", [wf, s, z], name=self._fresh("w_quant"), **attrs)
        lo, hi = self.const(np.int8(clip[0]), "w_lo"), self.const(np.int8(clip[1]), "w_hi")
        q = self.node("Clip", [q, lo, hi], name=self._fresh("w_clip"))
        return self.node("DequantizeLinear", [q, s, z], name=self._fresh("w_dequant"), **attrs)

    def gemm(self, x: str, w: str, bias: np.ndarray | None, name: str, **attrs) -> str:
        inputs = [x, w] + ([] if bias is None else [self.const(bias.astype(np.float32), "b")])
        return self.node("Gemm", inputs, name=name, **attrs)

    def build(
        self,
        output: str,
        opset: int = 14,
        initializers_as_inputs: bool = False,
        extra_inputs: list[onnx.ValueInfoProto] | None = None,
    ) -> onnx.ModelProto:
        inputs = [
            helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, ["batch", self.n_in])
        ]
        inputs += extra_inputs or []
        if initializers_as_inputs:
            # What torch's legacy exporter did with keep_initializers_as_inputs=True.
            inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in self.initializers
            ]
        graph = helper.make_graph(
            self.nodes,
            "test_graph",
            inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", None])],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


# ----------------------------------------------------------------------------- oracles


def ort_run(
    model: onnx.ModelProto, x: np.ndarray, extra_outputs: tuple[str, ...] = ()
) -> list[np.ndarray]:
    """onnxruntime, optimizations off; ``extra_outputs`` exposes intermediate tensors too."""
    if extra_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for name in extra_outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]
    )
    feed = {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)}
    return sess.run(None, feed)


def assert_outputs_match(ours: np.ndarray, ref: np.ndarray, max_bad_fraction: float = 0.0):
    """Close float outputs and identical argmax, row by row.

    The interpreter computes in float64 and onnxruntime in float32: when a value lands within a
    float32 rounding error of a quantization boundary (a .5 of a level), the two can pick
    neighbouring levels and that row then differs. That is vanishingly rare on random data (the
    seeded tests below see none), so hand-built tests allow at most ``max_bad_fraction`` of
    such rows (2%), and the integer and exact-tie tests allow none.
    """
    assert ours.shape == ref.shape
    close = np.isclose(ours, ref, rtol=RTOL, atol=ATOL).all(axis=1)
    same_argmax = ours.argmax(axis=1) == ref.argmax(axis=1)
    good = close & same_argmax
    assert good.mean() >= 1.0 - max_bad_fraction, (
        f"{(~good).sum()} of {len(good)} rows differ; first: "
        f"ours={ours[~good][:1]}, onnxruntime={ref[~good][:1]}"
    )


def random_rows(rng: np.random.Generator, n: int = N_ROWS, std: float = 1.5) -> np.ndarray:
    return (rng.standard_normal((n, N_IN)) * std).astype(np.float32)


# ----------------------------------------------------------------------------- 1. weights


def _tie_weights(scale: np.float32, shape: tuple[int, int]) -> np.ndarray:
    """float32 weights that are exactly ``(k + 0.5) * scale`` for k in [-7, 5] (ties), plus
    integers and off-grid values, so the grid has ties on both sides and saturation."""
    rng = np.random.default_rng(1)
    n = shape[0] * shape[1]
    halves = (np.arange(-7, 6) + 0.5).astype(np.float32)  # -6.5 ... 5.5
    ints = np.arange(-7, 7).astype(np.float32)
    q = np.concatenate([halves, ints, rng.uniform(-7, 7, n).astype(np.float32)])[:n]
    w = (q * scale).astype(np.float32)
    return rng.permutation(w).reshape(shape)


def _expected_weight(w: np.ndarray, scale: np.ndarray, lo: int = -4, hi: int = 3) -> np.ndarray:
    """ONNX QuantizeLinear then Clip: round half to even of w / scale (in float32)."""
    return np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32)), lo, hi).astype(
        np.int64
    )


def _single_layer(builder: GraphBuilder, w_out: str, bias: np.ndarray, **gemm_attrs) -> str:
    x = builder.qdq(builder.input_name, 0.25, np.int8(0), (-8, 7), stem="in")
    return builder.gemm(x, w_out, bias, "fc0", **gemm_attrs)


@pytest.mark.parametrize("scale", [0.25, 0.1, 0.37])
def test_float_weight_recovery_rounds_half_to_even_and_clips(scale: float) -> None:
    scale = np.float32(scale)
    w = _tie_weights(scale, (5, N_IN))
    ratio = w / scale  # float32 division, as QuantizeLinear computes it
    n_ties = int(np.sum(ratio - np.floor(ratio) == 0.5))
    if scale == np.float32(0.25):
        # A power-of-two scale keeps every constructed tie an exact tie in float32.
        assert n_ties == 13
    assert n_ties > 0
    b = GraphBuilder()
    out = _single_layer(b, b.float_weight(w, scale), np.zeros(5), transB=1)
    model = b.build(out)
    program = program_from_onnx(model)

    (layer,) = program.layers
    expected = _expected_weight(w, np.asarray(scale))
    assert layer.weight.dtype == np.int64
    assert layer.weight.shape == (5, N_IN)
    np.testing.assert_array_equal(layer.weight, expected)
    # The ties really are resolved to even (np.rint): e.g. 0.5 -> 0, 1.5 -> 2, -2.5 -> -2.
    tie = (ratio - np.floor(ratio) == 0.5) & (ratio > -4) & (ratio < 3)  # unsaturated ties
    assert tie.sum() >= 4
    assert np.all(layer.weight[tie] % 2 == 0)
    assert np.all(np.abs(layer.weight[tie] - ratio[tie]) == 0.5)
    assert set(np.unique(layer.weight)) <= set(range(-4, 4))
    assert layer.weight.min() == -4 and layer.weight.max() == 3  # saturation reached
    np.testing.assert_allclose(layer.acc_scale, float(scale) * 0.25)

    # onnxruntime's own QuantizeLinear -> Clip -> DequantizeLinear of the same constant agrees.
    wb = GraphBuilder()
    dq = wb.float_weight(w, scale)
    graph = helper.make_graph(
        wb.nodes,
        "w",
        [],
        [helper.make_tensor_value_info(dq, TensorProto.FLOAT, [None, None])],
        initializer=wb.initializers,
    )
    w_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    w_model.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    (w_ort,) = ort.InferenceSession(w_model.SerializeToString(), so).run(None, {})
    np.testing.assert_array_equal(np.rint(w_ort / scale).astype(np.int64), layer.weight)

    x = random_rows(np.random.default_rng(2))
    (ref,) = ort_run(model, x)
    assert_outputs_match(program.run(x.astype(np.float64)), ref)


def test_integer_weight_initializer_with_clip() -> None:
    rng = np.random.default_rng(3)
    w_int = rng.integers(-8, 8, size=(5, N_IN)).astype(np.int8)  # Clip(-4, 3) saturates some
    b = GraphBuilder()
    out = _single_layer(b, b.int_weight(w_int, 0.2), rng.standard_normal(5), transB=1)
    model = b.build(out)
    program = program_from_onnx(model)
    np.testing.assert_array_equal(program.layers[0].weight, np.clip(w_int, -4, 3))
    assert program.layers[0].output_quantizer is None

    x = random_rows(rng)
    (ref,) = ort_run(model, x)
    assert_outputs_match(program.run(x.astype(np.float64)), ref)


def test_integer_weight_initializer_without_clip() -> None:
    rng = np.random.default_rng(4)
    w_int = rng.integers(-100, 100, size=(5, N_IN)).astype(np.int8)
    b = GraphBuilder()
    out = _single_layer(b, b.int_weight(w_int, 0.01, clip=None), rng.standard_normal(5), transB=1)
    program = program_from_onnx(b.build(out))
    np.testing.assert_array_equal(program.layers[0].weight, w_int.astype(np.int64))


@pytest.mark.parametrize("form", ["integer", "float"])
def test_per_output_channel_weight_scale(form: str) -> None:
    rng = np.random.default_rng(5)
    n_out = 5
    scales = np.array([0.05, 0.1, 0.2, 0.3, 0.75], dtype=np.float32)
    w_int = rng.integers(-4, 4, size=(n_out, N_IN))
    b = GraphBuilder()
    if form == "integer":
        w = b.int_weight(w_int, scales, axis=0)
    else:
        # Off-grid float weights: their integers come from the per-row QuantizeLinear.
        w_float = (w_int + rng.uniform(-0.45, 0.45, w_int.shape)) * scales[:, None]
        w = b.float_weight(w_float.astype(np.float32), scales, axis=0)
    bias = rng.standard_normal(n_out)
    model = b.build(_single_layer(b, w, bias, transB=1))
    program = program_from_onnx(model)
    (layer,) = program.layers
    np.testing.assert_array_equal(layer.weight, w_int)
    np.testing.assert_allclose(layer.acc_scale, scales.astype(np.float64) * 0.25, rtol=0)
    np.testing.assert_allclose(layer.bias, bias.astype(np.float32), rtol=0)

    x = random_rows(rng)
    (ref,) = ort_run(model, x)
    assert_outputs_match(program.run(x.astype(np.float64)), ref)


def test_per_input_channel_weight_scale_is_rejected() -> None:
    # A scale per input column does not factor out of the integer accumulator.
    b = GraphBuilder()
    w = b.int_weight(np.ones((5, N_IN)), np.linspace(0.1, 0.6, N_IN), axis=1)
    model = b.build(_single_layer(b, w, np.zeros(5), transB=1))
    with pytest.raises(UnsupportedOperatorError, match="per tensor or per output neuron"):
        program_from_onnx(model)


# ----------------------------------------------------------------------------- 2. ranges


@pytest.mark.parametrize(
    ("zp", "clip", "expected", "bits"),
    [
        (np.int8(0), (-3, 3), IntRange(-3, 3), 3),  # signed, narrow 3 bits
        (np.int8(0), (-4, 3), IntRange(-4, 3), 3),  # signed 3 bits
        (np.int8(0), (-127, 127), IntRange(-127, 127), 8),  # narrow int8
        (np.uint8(0), (0, 7), IntRange(0, 7), 3),  # unsigned 3 bits
        (np.int8(0), None, IntRange(-128, 127), 8),  # the zero point's full type
        (np.uint8(0), None, IntRange(0, 255), 8),
    ],
)
def test_input_quantizer_range_from_zero_point_type_and_clip(zp, clip, expected, bits) -> None:
    b = GraphBuilder()
    x = b.qdq("x", 0.3, zp, clip, stem="in")
    w = b.int_weight(np.random.default_rng(6).integers(-4, 4, (3, N_IN)), 0.1)
    model = b.build(b.gemm(x, w, np.zeros(3), "fc0", transB=1))
    program = program_from_onnx(model)
    q = program.input_quantizer
    assert (q.qmin, q.qmax) == (expected.lo, expected.hi)
    assert q.range == expected
    assert program.layers[0].input_range == expected
    assert expected.bits == bits
    assert float(q.scale) == pytest.approx(float(np.float32(0.3)), rel=0, abs=0)
    assert int(q.zero_point) == 0

    x_float = random_rows(np.random.default_rng(7), std=40.0)  # reaches both saturations
    q_ints = program.quantize_input(x_float)
    assert q_ints.min() == expected.lo and q_ints.max() == expected.hi
    qdq_tensor = b.nodes[1 if clip is None else 2].input[0]  # QuantizeLinear or Clip output
    _, q_ort = ort_run(model, x_float, extra_outputs=(qdq_tensor,))
    np.testing.assert_array_equal(q_ints, q_ort.astype(np.int64))


def test_hidden_quantizer_range_and_asymmetric_zero_points() -> None:
    """uint8 activations with non-zero zero points: the zero point becomes a per-neuron offset."""
    rng = np.random.default_rng(8)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.uint8(7), (0, 15), stem="in")
    w1_int = rng.integers(-4, 4, (N_HIDDEN, N_IN))
    h = b.gemm(x, b.int_weight(w1_int, 0.15), rng.standard_normal(N_HIDDEN) * 0.3, "fc0", transB=1)
    h = b.node("Relu", [h], name="relu0")
    h = b.qdq(h, HIDDEN_SCALE, np.uint8(3), (0, 31), stem="hid")
    w2_int = rng.integers(-4, 4, (N_OUT, N_HIDDEN))
    out = b.gemm(h, b.int_weight(w2_int, 0.2), rng.standard_normal(N_OUT), "fc1", transB=1)
    model = b.build(out)
    program = program_from_onnx(model)

    fc0, fc1 = program.layers
    assert fc0.input_range == IntRange(0, 15)
    # fc1 reads fc0's table outputs: a ReLU's, quantized with zero point 3, so never below 3.
    assert fc1.input_range == IntRange(3, 31)
    assert fc0.output_quantizer is not None and fc1.output_quantizer is None
    assert fc0.output_quantizer.range == IntRange(0, 31)
    assert int(fc0.output_quantizer.zero_point) == 3
    np.testing.assert_array_equal(fc0.offset, -7 * w1_int.sum(axis=1))
    np.testing.assert_array_equal(fc1.offset, -3 * w2_int.sum(axis=1))

    x_float = random_rows(rng)
    hid_q = next(n.output[0] for n in b.nodes if n.name.startswith("hid_clip"))
    ref, hid_ort = ort_run(model, x_float, extra_outputs=(hid_q,))
    q = program.quantize_input(x_float)
    np.testing.assert_array_equal(fc0.lookup(fc0.accumulate(q)), hid_ort.astype(np.int64))
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


@pytest.mark.parametrize(
    ("activation", "bits", "expected"),
    [
        ("Relu", 3, IntRange(0, 3)),  # a ReLU: the quantizer's non-negative half
        ("Tanh", 3, IntRange(-4, 3)),  # tanh * 4 reaches the whole range
        ("Sigmoid", 4, IntRange(0, 4)),  # (0, 1) / 0.25: neither end of [-8, 7]
    ],
)
def test_a_layer_after_a_lookup_is_proven_on_the_lookups_outputs(
    activation: str, bits: int, expected: IntRange
) -> None:
    """The next accumulator is proven on the hull of the lookup's outputs, not the whole
    quantizer range: after a ReLU into a signed 3-bit quantizer, [0, 3], so 10 products of
    3-bit weights fit 8 bits where [-4, 3] allows 7. The circuit's tables hold nothing else,
    even where no run without errors looks."""
    from fheqnn.compiler.backend import _shifted_lookup

    rng = np.random.default_rng(12)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-4, 3), stem="in")
    w1 = rng.integers(-4, 4, (N_HIDDEN, N_IN))
    h = b.gemm(x, b.int_weight(w1, 0.15), rng.standard_normal(N_HIDDEN), "fc0", transB=1)
    h = b.node(activation, [h], name="act0")
    qrange = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    h = b.qdq(h, 0.25, np.int8(0), qrange, stem="hid")
    w2 = np.full((N_OUT, N_HIDDEN), -4, dtype=np.int64)  # the most negative weight, 8 times
    out = b.gemm(h, b.int_weight(w2, 0.2), np.zeros(N_OUT), "fc1", transB=1)
    program = program_from_onnx(b.build(out))
    fc0, fc1 = program.layers
    assert fc1.input_range == expected
    assert fc1.proven_range() == IntRange(-4 * 8 * expected.hi, -4 * 8 * expected.lo)
    # fc0's table in the circuit, on every value of its input's width: within the range
    # proven for fc1, and on the accumulators a run reaches, fc0's lookup itself.
    for lsbs in (0, 2):
        layer = replace(fc0, round_lsbs=lsbs)
        table = _shifted_lookup(layer, fc1.input_range)
        every = np.arange(2 ** layer.circuit_bits())[:, None]
        entries = table(every)
        assert expected.lo <= entries.min() and entries.max() <= expected.hi
        lo, hi = layer.neuron_ranges()
        reached = np.arange(lo.min(), hi.max() + 1)[:, None]
        np.testing.assert_array_equal(table(reached + layer.shift), layer.lookup(reached))


def test_rounding_wider_than_the_margin_of_the_proof_is_refused_before_compiling() -> None:
    from fheqnn.compiler.passes import check_lookup_margins
    from fheqnn.errors import InternalError

    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-4, 3), stem="in")
    w1 = np.random.default_rng(3).integers(-4, 4, (N_HIDDEN, N_IN))
    h = b.node("Relu", [b.gemm(x, b.int_weight(w1, 0.15), np.zeros(N_HIDDEN), "fc0", transB=1)])
    h = b.qdq(h, 0.25, np.int8(0), (-4, 3), stem="hid")
    out = b.gemm(h, b.int_weight(np.ones((N_OUT, N_HIDDEN), np.int64), 0.2), np.zeros(N_OUT),
                 "fc1", transB=1)  # fmt: skip
    program = program_from_onnx(b.build(out))
    fc0 = program.layers[0]
    widest = fc0.proven_range().bits - 1  # a lookup keeps at least one bit: the largest step
    assert 2 << widest <= fc0.lookup_margin()

    def rounded(lsbs: int) -> Program:
        return replace(program, layers=(replace(fc0, round_lsbs=lsbs), *program.layers[1:]))

    check_lookup_margins(rounded(widest))
    with pytest.raises(InternalError, match="margin"):
        check_lookup_margins(rounded(widest + 2))


def test_quantizer_without_zero_point_input_is_uint8() -> None:
    """ONNX's default zero point is uint8 0: the range is [0, 255]."""
    rng = np.random.default_rng(9)
    b = GraphBuilder()
    s = b.const(np.float32(0.3), "in_scale")
    q = b.node("QuantizeLinear", ["x", s], name="in_quant")
    x = b.node("DequantizeLinear", [q, s], name="in_dequant")
    w = b.int_weight(rng.integers(-4, 4, (3, N_IN)), 0.15)
    model = b.build(b.gemm(x, w, rng.standard_normal(3), "fc0", transB=1))
    program = program_from_onnx(model)
    assert program.input_quantizer.range == IntRange(0, 255)
    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


# ----------------------------------------------------------------------------- 3. activations


def _single(op: str, **attrs) -> Callable[[GraphBuilder, str], str]:
    return lambda b, h: b.node(op, [h], **attrs)


def _clip(lo: float, hi: float) -> Callable[[GraphBuilder, str], str]:
    return lambda b, h: b.node("Clip", [h, b.const(np.float32(lo)), b.const(np.float32(hi))])


def _silu(b: GraphBuilder, h: str) -> str:
    return b.node("Mul", [h, b.node("Sigmoid", [h])])


def _gelu_erf(b: GraphBuilder, h: str) -> str:
    """torch's legacy export of GELU: x * (1 + erf(x / sqrt 2)) * 0.5."""
    d = b.node("Div", [h, b.const(np.float32(math.sqrt(2.0)))])
    e = b.node("Erf", [d])
    a = b.node("Add", [e, b.const(np.float32(1.0))])
    m = b.node("Mul", [h, a])
    return b.node("Mul", [m, b.const(np.float32(0.5))])


def _gelu_erf_branch_first(b: GraphBuilder, h: str) -> str:
    """The same GELU, with the 0.5 * x branch computed first (another valid topological order)."""
    half = b.node("Mul", [h, b.const(np.float32(0.5))])
    d = b.node("Div", [h, b.const(np.float32(math.sqrt(2.0)))])
    e = b.node("Erf", [d])
    a = b.node("Add", [b.const(np.float32(1.0)), e])
    return b.node("Mul", [half, a])


def _prelu(b: GraphBuilder, h: str) -> str:
    slope = np.linspace(-0.5, 0.5, N_HIDDEN).astype(np.float32)
    return b.node("PRelu", [h, b.const(slope)])


def _affine_per_channel(b: GraphBuilder, h: str) -> str:
    """A folded batch norm: per-channel Mul and Add constants, then Relu."""
    gamma = np.linspace(0.5, 1.5, N_HIDDEN).astype(np.float32).reshape(1, -1)
    beta = np.linspace(-0.3, 0.3, N_HIDDEN).astype(np.float32)
    m = b.node("Mul", [h, b.const(gamma)])
    return b.node("Relu", [b.node("Add", [m, b.const(beta)])])


# name -> (chain builder, opset)
ACTIVATIONS: dict[str, tuple[Callable[[GraphBuilder, str], str], int]] = {
    "relu": (_single("Relu"), 14),
    "leaky_relu": (_single("LeakyRelu", alpha=0.1), 14),
    "sigmoid": (_single("Sigmoid"), 14),
    "tanh": (_single("Tanh"), 14),
    "selu": (_single("Selu"), 14),
    "elu": (_single("Elu"), 14),
    "elu_alpha": (_single("Elu", alpha=0.7), 14),
    "hard_sigmoid": (_single("HardSigmoid"), 14),
    "hard_sigmoid_attrs": (_single("HardSigmoid", alpha=0.3, beta=0.4), 14),
    "hard_swish": (_single("HardSwish"), 14),
    "softplus": (_single("Softplus"), 14),
    "relu6": (_clip(0.0, 6.0), 14),
    "hardtanh": (_clip(-1.0, 1.0), 14),
    "silu": (_silu, 14),
    "gelu_erf": (_gelu_erf, 14),
    "gelu_erf_branch_first": (_gelu_erf_branch_first, 14),
    # Beyond the brief's list: a few more registry ops, cheap to check.
    "gelu_native": (_single("Gelu"), 20),
    "gelu_tanh": (_single("Gelu", approximate="tanh"), 20),
    "celu": (_single("Celu", alpha=0.8), 14),
    "mish": (_single("Mish"), 18),
    "softsign": (_single("Softsign"), 14),
    "thresholded_relu": (_single("ThresholdedRelu", alpha=0.4), 14),
    "prelu_per_channel": (_prelu, 14),
    "affine_per_channel_relu": (_affine_per_channel, 14),
}


def _two_layer_mlp(
    activation: Callable[[GraphBuilder, str], str], opset: int, seed: int, gemm_form: str = "gemm"
) -> tuple[onnx.ModelProto, GraphBuilder, str]:
    """input QDQ -> linear -> activation chain -> QDQ -> linear. Returns the model, its builder
    and the name of the hidden integer tensor (output of the hidden quantizer's Clip)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    w1 = rng.integers(-4, 4, (N_HIDDEN, N_IN))
    h = _linear(b, x, w1, 0.15, rng.standard_normal(N_HIDDEN) * 0.3, "fc0", gemm_form)
    h = activation(b, h)
    h = b.qdq(h, HIDDEN_SCALE, np.int8(0), (-32, 31), stem="hid")
    hidden_ints = b.nodes[-2].output[0]
    w2 = rng.integers(-4, 4, (N_OUT, N_HIDDEN))
    out = _linear(b, h, w2, 0.2, rng.standard_normal(N_OUT), "fc1", gemm_form)
    return b.build(out, opset=opset), b, hidden_ints


def _linear(
    b: GraphBuilder,
    x: str,
    w_int: np.ndarray,
    scale: float,
    bias: np.ndarray,
    name: str,
    form: str,
) -> str:
    """A linear layer in one of the forms exporters emit; ``w_int`` is (n_out, n_in)."""
    if form == "gemm":
        return b.gemm(x, b.int_weight(w_int, scale), bias, name, transB=1)
    if form == "gemm_transB0":
        return b.gemm(x, b.int_weight(w_int.T, scale), bias, name)
    if form == "gemm_alpha_beta":
        return b.gemm(x, b.int_weight(w_int, scale), bias, name, transB=1, alpha=0.5, beta=2.0)
    if form == "gemm_float_weights":
        w = (w_int + np.random.default_rng(0).uniform(-0.49, 0.49, w_int.shape)) * scale
        return b.gemm(x, b.float_weight(w.astype(np.float32), scale), bias, name, transB=1)
    if form == "matmul_add":
        m = b.node("MatMul", [x, b.int_weight(w_int.T, scale)], name=name)
        return b.node("Add", [m, b.const(bias.astype(np.float32), "b")], name=f"{name}_bias")
    if form == "matmul_add_bias_first":
        m = b.node("MatMul", [x, b.int_weight(w_int.T, scale)], name=name)
        return b.node("Add", [b.const(bias.astype(np.float32), "b"), m], name=f"{name}_bias")
    if form == "matmul_per_channel":
        scales = np.linspace(0.1, 0.3, w_int.shape[0]).astype(np.float32)
        m = b.node("MatMul", [x, b.int_weight(w_int.T, scales, axis=1)], name=name)
        return b.node("Add", [m, b.const(bias.astype(np.float32), "b")], name=f"{name}_bias")
    if form == "matmul_no_bias":
        return b.node("MatMul", [x, b.int_weight(w_int.T, scale)], name=name)
    if form == "gemm_transposed_weight":
        # DequantizeLinear of (n_in, n_out) integers, then a Transpose, then Gemm(transB=1).
        t = b.node("Transpose", [b.int_weight(w_int.T, scale)], perm=[1, 0])
        return b.gemm(x, t, bias, name, transB=1)
    raise AssertionError(form)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_two_layer_mlp_activation_chains_match_onnxruntime(name: str) -> None:
    chain, opset = ACTIVATIONS[name]
    seed = 100 + list(ACTIVATIONS).index(name)
    model, _, hidden_ints = _two_layer_mlp(chain, opset, seed)
    program = program_from_onnx(model)
    assert len(program.layers) == 2
    fc0, fc1 = program.layers
    assert (fc0.name, fc1.name) == ("fc0", "fc1")
    assert fc0.activation is not None
    assert fc1.activation is None
    for node in fc0.activation.nodes:
        assert node.op_type in ELEMENTWISE_KERNELS

    x = random_rows(np.random.default_rng(seed))
    ref, hid_ort = ort_run(model, x, extra_outputs=(hidden_ints,))
    hid_ours = fc0.lookup(fc0.accumulate(program.quantize_input(x)))
    # Hidden integers: a row may differ only where onnxruntime's float32 activation sits within
    # rounding error of a level boundary (see assert_outputs_match); allow 2% of rows.
    same_rows = (hid_ours == hid_ort.astype(np.int64)).all(axis=1)
    assert same_rows.mean() >= 0.98, f"{(~same_rows).sum()} rows with different hidden levels"
    # The activations used here do reach several levels (the test is not vacuous).
    assert len(np.unique(hid_ours)) >= 4
    assert_outputs_match(program.run(x.astype(np.float64)), ref, max_bad_fraction=0.02)


def test_activation_chain_ops_are_recorded_in_order() -> None:
    model, _, _ = _two_layer_mlp(_gelu_erf, 14, 0)
    chain = program_from_onnx(model).layers[0].activation
    assert [n.op_type for n in chain.nodes] == ["Div", "Erf", "Add", "Mul", "Mul"]
    assert chain.describe() == "Div -> Erf -> Add -> Mul -> Mul"
    model, _, _ = _two_layer_mlp(_single("LeakyRelu", alpha=0.1), 14, 0)
    (node,) = program_from_onnx(model).layers[0].activation.nodes
    assert node.op_type == "LeakyRelu"
    assert dict(node.attributes)["alpha"] == pytest.approx(0.1)


def test_opset10_clip_with_attribute_bounds() -> None:
    """Before opset 11, Clip carries min/max as attributes (and quantizers have no Clip)."""
    rng = np.random.default_rng(15)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), None, stem="in")
    w1 = b.int_weight(rng.integers(-4, 4, (N_HIDDEN, N_IN)), 0.15, clip=None)
    h = b.gemm(x, w1, rng.standard_normal(N_HIDDEN), "fc0", transB=1)
    h = b.node("Clip", [h], name="clip_attr", min=-0.2, max=0.6)
    h = b.qdq(h, 0.0113, np.int8(0), None, stem="hid")
    w2 = b.int_weight(rng.integers(-4, 4, (N_OUT, N_HIDDEN)), 0.2, clip=None)
    model = b.build(b.gemm(h, w2, rng.standard_normal(N_OUT), "fc1", transB=1), opset=10)
    program = program_from_onnx(model)
    (node,) = program.layers[0].activation.nodes
    assert node.op_type == "Clip"
    assert dict(node.attributes) == {"lo": pytest.approx(-0.2), "hi": pytest.approx(0.6)}
    assert program.layers[0].output_quantizer.range == IntRange(-128, 127)
    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


def test_unnamed_layers_get_unique_names() -> None:
    model, _, _ = _two_layer_mlp(_single("Relu"), 14, 16)
    for node in model.graph.node:
        if node.op_type == "Gemm":
            node.name = ""
    assert [layer.name for layer in program_from_onnx(model).layers] == ["gemm_0", "gemm_1"]


def test_unused_node_after_the_graph_output_is_not_applied() -> None:
    # Regression: the output layer's chain once swallowed a node that only read the output.
    rng = np.random.default_rng(17)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    w = b.int_weight(rng.integers(-4, 4, (3, N_IN)), 0.15)
    y = b.gemm(x, w, rng.standard_normal(3), "fc0", transB=1)
    b.node("Sigmoid", [y], name="unused_tap")  # its output is not a graph output
    model = b.build(y)
    program = program_from_onnx(model)
    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert program.layers[0].activation is None
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


def test_int32_quantized_bias_is_folded() -> None:
    """A bias stored as int32 -> DequantizeLinear (brevitas' Int32Bias) is a constant too."""
    rng = np.random.default_rng(18)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    w = b.int_weight(rng.integers(-4, 4, (3, N_IN)), 0.15)
    bias_int = rng.integers(-50, 50, 3).astype(np.int32)
    bias_scale = np.float32(0.3 * 0.15)
    bq = b.node(
        "DequantizeLinear",
        [b.const(bias_int, "b_int"), b.const(bias_scale, "b_scale"), b.const(np.int32(0), "b_zp")],
        name="bias_dequant",
    )
    y = b.node("Gemm", [x, w, bq], name="fc0", transB=1)
    model = b.build(y)
    program = program_from_onnx(model)
    np.testing.assert_allclose(program.layers[0].bias, bias_int * np.float64(bias_scale))
    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


def test_quantizer_output_dtype_without_zero_point() -> None:
    """Opset 21: QuantizeLinear(output_dtype=INT8) without a zero point gives int8, not uint8."""
    rng = np.random.default_rng(19)
    b = GraphBuilder()
    s = b.const(np.float32(0.25), "in_scale")
    q = b.node("QuantizeLinear", ["x", s], name="in_quant", output_dtype=TensorProto.INT8)
    xd = b.node("DequantizeLinear", [q, s], name="in_dequant")
    w = b.int_weight(rng.integers(-4, 4, (2, N_IN)), 0.5, clip=None)
    y = b.gemm(xd, w, None, "fc0", transB=1)
    model = b.build(y, opset=21)
    program = program_from_onnx(model)
    assert (program.input_quantizer.qmin, program.input_quantizer.qmax) == (-128, 127)
    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


# ----------------------------------------------------------------------------- 4. linear forms


@pytest.mark.parametrize(
    "form",
    [
        "matmul_add",
        "matmul_add_bias_first",
        "matmul_per_channel",
        "matmul_no_bias",
        "gemm_transB0",
        "gemm_alpha_beta",
        "gemm_float_weights",
        "gemm_transposed_weight",
    ],
)
def test_linear_layer_forms_match_onnxruntime(form: str) -> None:
    model, _, hidden_ints = _two_layer_mlp(_single("Relu"), 14, 7, gemm_form=form)
    ref_model, _, _ = _two_layer_mlp(_single("Relu"), 14, 7, gemm_form="gemm")
    program = program_from_onnx(model)
    reference = program_from_onnx(ref_model)
    # Same integer weights, always stored (n_out, n_in), whatever the form.
    for ours, theirs in zip(program.layers, reference.layers, strict=True):
        assert ours.weight.shape == theirs.weight.shape
        np.testing.assert_array_equal(ours.weight, theirs.weight)
    fc0, fc1 = program.layers
    assert fc0.weight.shape == (N_HIDDEN, N_IN)
    assert fc1.weight.shape == (N_OUT, N_HIDDEN)
    if form == "matmul_no_bias":
        assert not fc0.bias.any() and not fc1.bias.any()
    else:
        beta = 2.0 if form == "gemm_alpha_beta" else 1.0
        np.testing.assert_allclose(fc1.bias, beta * reference.layers[1].bias, rtol=1e-7)
        alpha = 0.5 if form == "gemm_alpha_beta" else 1.0
        if form != "matmul_per_channel":
            np.testing.assert_allclose(fc1.acc_scale, alpha * reference.layers[1].acc_scale)

    x = random_rows(np.random.default_rng(11))
    ref, hid_ort = ort_run(model, x, extra_outputs=(hidden_ints,))
    hid_ours = fc0.lookup(fc0.accumulate(program.quantize_input(x)))
    np.testing.assert_array_equal(hid_ours, hid_ort.astype(np.int64))
    assert_outputs_match(program.run(x.astype(np.float64)), ref)


# ----------------------------------------------------------------------------- 5. legacy inputs


def test_initializers_listed_as_graph_inputs_are_not_inputs() -> None:
    rng = np.random.default_rng(12)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    h = b.gemm(
        x,
        b.int_weight(rng.integers(-4, 4, (N_HIDDEN, N_IN)), 0.15),
        rng.standard_normal(N_HIDDEN),
        "fc0",
        transB=1,
    )
    h = b.qdq(b.node("Relu", [h]), HIDDEN_SCALE, np.int8(0), (-32, 31), stem="hid")
    out = b.gemm(
        h,
        b.int_weight(rng.integers(-4, 4, (N_OUT, N_HIDDEN)), 0.2),
        rng.standard_normal(N_OUT),
        "fc1",
        transB=1,
    )
    model = b.build(out, initializers_as_inputs=True)
    assert len(model.graph.input) == 1 + len(model.graph.initializer)
    program = program_from_onnx(model)
    assert program.n_features == N_IN and program.n_outputs == N_OUT

    x_float = random_rows(rng)
    (ref,) = ort_run(model, x_float)
    assert_outputs_match(program.run(x_float.astype(np.float64)), ref)


# ----------------------------------------------------------------------------- 6. errors


def _hidden_op_model(op_builder: Callable[[GraphBuilder, str], str]) -> onnx.ModelProto:
    rng = np.random.default_rng(13)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    h = b.gemm(
        x,
        b.int_weight(rng.integers(-4, 4, (N_HIDDEN, N_IN)), 0.15),
        np.zeros(N_HIDDEN),
        "fc0",
        transB=1,
    )
    h = b.qdq(op_builder(b, h), HIDDEN_SCALE, np.int8(0), (-32, 31), stem="hid")
    out = b.gemm(
        h,
        b.int_weight(rng.integers(-4, 4, (N_OUT, N_HIDDEN)), 0.2),
        np.zeros(N_OUT),
        "fc1",
        transB=1,
    )
    return b.build(out)


def test_unsupported_op_between_layers_names_op_node_and_supported_list() -> None:
    model = _hidden_op_model(lambda b, h: b.node("Softmax", [h], name="my_softmax", axis=1))
    with pytest.raises(UnsupportedOperatorError) as info:
        program_from_onnx(model)
    message = str(info.value)
    assert "Softmax" in message
    assert "my_softmax" in message
    assert "Supported operators:" in message
    for op in ("Gemm", "MatMul", "Relu", "QuantizeLinear", "DequantizeLinear", "Sigmoid"):
        assert op in message
    assert "Softmax" not in supported_operators()
    assert isinstance(info.value, InvalidModelError) and isinstance(info.value, ValueError)


def test_a_max_pool_before_the_quantizer_is_reported_with_its_node_name_and_why() -> None:
    b = GraphBuilder(n_in=16)
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    shape = b.const(np.array([-1, 1, 4, 4], dtype=np.int64), "shape")
    img = b.node("Reshape", [x, shape], name="to_image")
    kernel = b.int_weight(np.ones((2, 1, 2, 2)), 0.1)
    y = b.node("Conv", [img, kernel], name="conv_1")
    pooled = b.node("MaxPool", [y], name="pool_1", kernel_shape=[2, 2])
    flat = b.node("Flatten", [pooled], name="flatten")
    model = b.build(flat)
    with pytest.raises(
        UnsupportedOperatorError, match=r"MaxPool.*'pool_1'.*on a quantizer's output only"
    ):
        program_from_onnx(model)


def test_unsupported_unnamed_node_is_labelled_by_its_output() -> None:
    model = _hidden_op_model(lambda b, h: b.node("Softmax", [h], axis=1))
    model.graph.node[[n.op_type for n in model.graph.node].index("Softmax")].name = ""
    with pytest.raises(UnsupportedOperatorError, match=r"<unnamed Softmax -> softmax_\d+_out>"):
        program_from_onnx(model)


def test_gemm_with_float_weights_is_an_invalid_model_naming_the_layer() -> None:
    rng = np.random.default_rng(14)
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    w = b.const(rng.standard_normal((3, N_IN)).astype(np.float32), "w_plain")
    model = b.build(b.gemm(x, w, np.zeros(3), "dense_layer", transB=1))
    with pytest.raises(InvalidModelError, match=r"'dense_layer' are not quantized") as info:
        program_from_onnx(model)
    assert not isinstance(info.value, UnsupportedOperatorError)


def test_two_real_inputs_are_rejected() -> None:
    b = GraphBuilder()
    x = b.qdq("x", 0.3, np.int8(0), (-8, 7), stem="in")
    w = b.int_weight(np.ones((3, N_IN)), 0.1)
    h = b.gemm(x, w, np.zeros(3), "fc0", transB=1)
    out = b.node("Add", [h, "other"], name="add_other")
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", 3])
    model = b.build(out, extra_inputs=[other])
    with pytest.raises(InvalidModelError, match=r"expected one input tensor.*'x', 'other'"):
        program_from_onnx(model)


def test_missing_file_is_an_invalid_model(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(InvalidModelError, match="does not exist"):
        program_from_onnx(missing)
    with pytest.raises(InvalidModelError, match="does not exist"):
        program_from_onnx(str(missing))


def test_unreadable_file_is_an_invalid_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model\xff" * 3)
    with pytest.raises(InvalidModelError):
        program_from_onnx(junk)


def test_model_from_file_path_matches_model_proto(tmp_path: Path) -> None:
    model, _, _ = _two_layer_mlp(_single("Tanh"), 14, 3)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    from_file, from_proto = program_from_onnx(path), program_from_onnx(model)
    assert from_file.source == str(path)
    x = random_rows(np.random.default_rng(3)).astype(np.float64)
    np.testing.assert_array_equal(from_file.run(x), from_proto.run(x))


@pytest.mark.parametrize("zp", [1, -2])
def test_nonzero_weight_zero_point_is_rejected(zp: int) -> None:
    b = GraphBuilder()
    w = b.int_weight(np.ones((3, N_IN)), 0.1, zp=np.int8(zp))
    model = b.build(_single_layer(b, w, np.zeros(3), transB=1))
    with pytest.raises(UnsupportedOperatorError, match="zero points must be 0"):
        program_from_onnx(model)


def test_per_channel_weight_zero_point_with_one_nonzero_entry_is_rejected() -> None:
    b = GraphBuilder()
    zps = np.array([0, 0, 3], dtype=np.int8)
    w = b.int_weight(np.ones((3, N_IN)), np.full(3, 0.1), axis=0, zp=zps)
    model = b.build(_single_layer(b, w, np.zeros(3), transB=1))
    with pytest.raises(UnsupportedOperatorError, match="zero points must be 0"):
        program_from_onnx(model)


def _mlp_with_quantizer_edit(edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    model, _, _ = _two_layer_mlp(_single("Relu"), 14, 18)
    edit(model)
    return model


def _mismatched_dequant_scale(model: onnx.ModelProto) -> None:
    dq = next(n for n in model.graph.node if n.name.startswith("hid_dequant"))
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.5), "other_scale"))
    dq.input[1] = "other_scale"


def _per_channel_activation_scale(model: onnx.ModelProto) -> None:
    q = next(n for n in model.graph.node if n.name.startswith("hid_quant"))
    dq = next(n for n in model.graph.node if n.name.startswith("hid_dequant"))
    scales = np.full(N_HIDDEN, HIDDEN_SCALE, np.float32)
    zps = np.zeros(N_HIDDEN, np.int8)
    model.graph.initializer.extend(
        [numpy_helper.from_array(scales, "pc_scale"), numpy_helper.from_array(zps, "pc_zp")]
    )
    for node in (q, dq):
        node.input[1], node.input[2] = "pc_scale", "pc_zp"


def _three_d_input(model: onnx.ModelProto) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims.add().dim_value = 1


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (_mismatched_dequant_scale, UnsupportedOperatorError, "must use its QuantizeLinear"),
        (_per_channel_activation_scale, UnsupportedOperatorError, "must be per-tensor"),
        (_three_d_input, InvalidModelError, r"must be \(batch, features\) or \(batch, channels"),
    ],
)
def test_malformed_quantizers_and_inputs_are_rejected(edit, error, match) -> None:
    with pytest.raises(error, match=match):
        program_from_onnx(_mlp_with_quantizer_edit(edit))


def test_softmax_after_the_output_layer_is_unsupported() -> None:
    model, _, _ = _two_layer_mlp(_single("Relu"), 14, 19)
    last = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [last], ["probs"], name="probs", axis=1))
    model.graph.output[0].name = "probs"
    with pytest.raises(UnsupportedOperatorError, match=r"Softmax \(node 'probs'\)"):
        program_from_onnx(model)


# ----------------------------------------------------------------------------- 7. brevitas


@pytest.fixture(scope="module")
def brevitas_exports(tmp_path_factory: pytest.TempPathFactory):
    """A calibrated, pruned SparseQuantNeuralNetwork exported by both brevitas paths."""
    torch.manual_seed(0)
    np.random.seed(0)
    module = fheqnn.SparseQuantNeuralNetwork(input_dim=5, n_layers=3, n_outputs=3)
    module.enable_pruning()
    module.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(8):
            module(torch.randn(64, 5, generator=generator) * 1.5)
    module.make_pruning_permanent()
    module.eval()

    directory = tmp_path_factory.mktemp("brevitas")
    legacy, dynamo = directory / "legacy.onnx", directory / "dynamo.onnx"
    with warnings.catch_warnings():
        # Importing brevitas.export and the torch exporters warn (deprecations, torchvision and
        # hadamard kernels absent); none of it concerns this model.
        warnings.simplefilter("ignore")
        fheqnn.model.export.export_module_to_onnx(module, legacy)
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(module, args=torch.zeros(1, 5), export_path=str(dynamo), opset_version=14)
    module.eval()
    return module, legacy, dynamo


def _ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("export", ["legacy", "dynamo"])
def test_brevitas_export_matches_onnxruntime_torch_and_integer_weights(
    brevitas_exports, export: str
) -> None:
    module, legacy, dynamo = brevitas_exports
    path = legacy if export == "legacy" else dynamo
    program = program_from_onnx(path)
    assert isinstance(program, Program)

    # Integer weights: the frontend drops nothing here (no dead neuron), same shapes, same values.
    torch_weights = [w.numpy() for w in module.integer_weights()]
    assert [layer.weight.shape for layer in program.layers] == [w.shape for w in torch_weights]
    for layer, w in zip(program.layers, torch_weights, strict=True):
        np.testing.assert_array_equal(layer.weight, w)
    assert [layer.is_hidden for layer in program.layers] == [True, True, False]
    # Accumulator scales: input scale times each neuron's weight scale (per tensor or per neuron).
    in_scale = float(program.input_quantizer.scale)
    for layer, linear in zip(program.layers, module.linear_layers(), strict=True):
        with torch.no_grad():
            w_scale = linear.quant_weight().scale.detach().numpy().astype(np.float64).reshape(-1)
        np.testing.assert_allclose(layer.acc_scale, in_scale * w_scale, rtol=1e-6)
        if layer.output_quantizer is not None:
            in_scale = float(layer.output_quantizer.scale)

    x = np.random.default_rng(21).standard_normal((40, 5)).astype(np.float32) * 1.5
    sess = _ort_session(path)
    name = sess.get_inputs()[0].name
    if export == "legacy":
        (ref,) = sess.run(None, {name: x})  # dynamic batch axis
    else:
        # The dynamo export fixes the batch at 1: one row at a time.
        ref = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x)).numpy()

    ours = program.run(x.astype(np.float64))
    assert ours.shape == (40, 3)
    np.testing.assert_array_equal(ours.argmax(axis=1), ref.argmax(axis=1))
    np.testing.assert_array_equal(ours.argmax(axis=1), torch_out.argmax(axis=1))
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours, torch_out, rtol=1e-4, atol=1e-4)
    # Not a constant network: the rows do not all land in one class or one output.
    assert len(np.unique(ours.round(6), axis=0)) > 10


def test_both_brevitas_exports_lower_to_the_same_program(brevitas_exports) -> None:
    _, legacy, dynamo = brevitas_exports
    a, b = program_from_onnx(legacy), program_from_onnx(dynamo)
    assert a.input_quantizer.range == b.input_quantizer.range
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.weight, lb.weight)
        np.testing.assert_array_equal(la.offset, lb.offset)
        np.testing.assert_allclose(la.acc_scale, lb.acc_scale, rtol=1e-7)
        np.testing.assert_allclose(la.bias, lb.bias, rtol=1e-6, atol=1e-7)
        assert la.input_range == lb.input_range
    x = np.random.default_rng(22).standard_normal((40, 5)) * 1.5
    np.testing.assert_allclose(a.run(x), b.run(x), rtol=1e-6, atol=1e-6)
