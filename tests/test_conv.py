"""Convolutional networks: the structured linear maps, the ONNX front end against
onnxruntime, the per-channel bound, dead channels, saving, image rows, and Concrete.

Hand-built QCDQ graphs vary one attribute at a time (strides, pads, dilations, groups, pools,
batch normalization); a brevitas network written without fheqnn checks the real export.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fheqnn import compile_onnx
from fheqnn.compiler.linear_ops import Conv2d, Dense, LinearPlan, MaxPool2d, sum_pool
from fheqnn.compiler.lowering import lower_program
from fheqnn.compiler.onnx_frontend import program_from_onnx
from fheqnn.compiler.passes import drop_dead_neurons
from fheqnn.compiler.serialize import program_from_dict, program_to_dict
from fheqnn.contract import ClientContract
from fheqnn.errors import (
    AccumulatorOverflowError,
    InvalidInputError,
    InvalidModelError,
    UnsupportedOperatorError,
)
from test_onnx_frontend import assert_outputs_match, ort_run

# ----------------------------------------------------------------------------- the maps


@pytest.mark.parametrize(
    ("in_shape", "c_out", "kernel", "strides", "pads", "dilations", "group"),
    [
        ((1, 6, 6), 3, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
        ((2, 7, 5), 4, (3, 2), (2, 1), (1, 0, 2, 1), (1, 1), 1),
        ((2, 8, 8), 2, (3, 3), (1, 2), (1, 1, 1, 1), (2, 1), 1),
        ((4, 6, 6), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4),  # depthwise
        ((4, 5, 5), 6, (2, 2), (1, 1), (0, 1, 0, 1), (1, 1), 2),
    ],
)
def test_conv2d_is_torch_convolution_on_integers(
    in_shape, c_out, kernel, strides, pads, dilations, group
) -> None:
    rng = np.random.default_rng(0)
    weights = rng.integers(-4, 4, size=(c_out, in_shape[0] // group, *kernel))
    op = Conv2d(weights, in_shape, strides, pads, dilations, group)
    x = rng.integers(-8, 8, size=(5, int(np.prod(in_shape))))
    top, left, bottom, right = pads
    image = torch.nn.functional.pad(
        torch.tensor(x, dtype=torch.float64).reshape(5, *in_shape), (left, right, top, bottom)
    )
    expected = torch.nn.functional.conv2d(
        image, torch.tensor(weights, dtype=torch.float64), None, strides, 0, dilations, group
    )
    assert op.out_shape == tuple(expected.shape[1:])
    np.testing.assert_array_equal(op.apply(x), expected.reshape(5, -1).numpy().astype(np.int64))
    np.testing.assert_array_equal(op.matrix() @ x.T, op.apply(x).T)


@pytest.mark.parametrize(
    ("kernel", "strides", "dilations"), [((2, 2), (2, 2), (1, 1)), ((3, 2), (1, 2), (2, 1))]
)
def test_max_pool_is_torch_max_pool_on_integers(kernel, strides, dilations) -> None:
    rng = np.random.default_rng(2)
    pool = MaxPool2d((3, 7, 6), kernel, strides, dilations)
    x = rng.integers(-8, 8, size=(4, 3 * 7 * 6))
    expected = torch.nn.functional.max_pool2d(
        torch.tensor(x, dtype=torch.float64).reshape(4, 3, 7, 6), kernel, strides, 0, dilations
    )
    assert pool.out_shape == tuple(expected.shape[1:])
    np.testing.assert_array_equal(pool.apply(x), expected.reshape(4, -1).numpy())
    np.testing.assert_array_equal(pool.apply(x[None]), pool.apply(x)[None])


def test_conv2d_refuses_kernels_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit 3 input channels in 2 group"):
        Conv2d(np.ones((2, 1, 3, 3)), (3, 5, 5), group=2)
    with pytest.raises(ValueError, match="window leaves no output"):
        Conv2d(np.ones((1, 1, 5, 5)), (1, 3, 3))


def test_plans_keep_rows_and_drop_whole_input_channels() -> None:
    rng = np.random.default_rng(1)
    conv = Conv2d(rng.integers(-3, 4, size=(3, 2, 2, 2)), (2, 4, 4))
    plan = LinearPlan((sum_pool((2, 5, 5), (2, 2)), conv, Dense(rng.integers(-2, 3, (4, 27)))))
    assert plan.matrix().shape == (4, 50)
    kept = plan.keep_rows(np.array([True, False, True, True]))
    np.testing.assert_array_equal(kept.matrix(), plan.matrix()[[0, 2, 3]])
    # A pool reads channel by channel: it cannot stop reading any input.
    assert not plan.droppable_inputs(np.ones(50, bool)).any()
    first = LinearPlan((conv,))
    drop = np.zeros(32, bool)
    drop[:16] = True  # all of channel 0
    drop[20] = True  # one value of channel 1: not a whole channel
    droppable = first.droppable_inputs(drop)
    np.testing.assert_array_equal(droppable, np.arange(32) < 16)
    np.testing.assert_array_equal(
        first.keep_inputs(~droppable).matrix(), first.matrix()[:, ~droppable]
    )


# ----------------------------------------------------------------------------- ONNX graphs


class ImageGraph:
    """QCDQ graphs of a (batch, C, H, W) input, built node by node."""

    def __init__(self, in_shape: tuple[int, int, int]) -> None:
        self.in_shape = in_shape
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(7)

    def const(self, value: np.ndarray) -> str:
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def quant(self, x: str, scale: float, signed: bool, name: str, zero_point: int = 0) -> str:
        s = self.const(np.float32(scale))
        z = self.const(np.int8(zero_point) if signed else np.uint8(zero_point))
        lo, hi = (-4, 3) if signed else (0, 7)
        dtype = np.int8 if signed else np.uint8
        q = self.node("QuantizeLinear", [x, s, z], f"{name}_q")
        q = self.node("Clip", [q, self.const(dtype(lo)), self.const(dtype(hi))], f"{name}_clip")
        return self.node("DequantizeLinear", [q, s, z], f"{name}_dq")

    def weight(self, shape: tuple[int, ...], scale: float | np.ndarray, axis: int = 0) -> str:
        w = self.const(self.rng.integers(-4, 4, size=shape).astype(np.int8))
        s = self.const(np.asarray(scale, dtype=np.float32))
        z = self.const(np.zeros(np.shape(scale), np.int8))
        return self.node("DequantizeLinear", [w, s, z], f"w{len(self.nodes)}", axis=axis)

    def conv(self, x: str, c_in: int, c_out: int, name: str, group: int = 1, **attrs) -> str:
        kernel = tuple(attrs.get("kernel_shape", (3, 3)))
        scale = self.rng.uniform(0.05, 0.2, size=c_out).astype(np.float32)
        w = self.weight((c_out, c_in // group, *kernel), scale)
        bias = self.const(self.rng.normal(0, 0.3, size=c_out).astype(np.float32))
        return self.node("Conv", [x, w, bias], name, group=group, **attrs)

    def gemm(self, x: str, n_in: int, n_out: int, name: str) -> str:
        w = self.weight((n_out, n_in), np.float32(0.11))
        bias = self.const(self.rng.normal(0, 0.3, size=n_out).astype(np.float32))
        return self.node("Gemm", [x, w, bias], name, transB=1)

    def build(self, output: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "image_graph",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *self.in_shape])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", None])],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, *shape)) * 1.2).astype(np.float32)


def _conv_net(conv_attrs: dict, pool: str | None, batch_norm: bool) -> onnx.ModelProto:
    """in quant -> Conv [-> BN] -> Relu -> quant [-> pool] -> Flatten -> Gemm."""
    g = ImageGraph((2, 7, 7))
    x = g.quant("x", 0.4, True, "in")
    group = conv_attrs.pop("group", 1)
    y = g.conv(x, 2, 4, "conv", group=group, **conv_attrs)
    if batch_norm:
        params = [g.const(g.rng.uniform(0.5, 1.5, 4).astype(np.float32)) for _ in range(2)]
        mean = g.const(g.rng.normal(0, 0.2, 4).astype(np.float32))
        var = g.const(g.rng.uniform(0.5, 2, 4).astype(np.float32))
        y = g.node("BatchNormalization", [y, *params, mean, var], "bn")
    y = g.quant(g.node("Relu", [y], "relu"), 0.25, False, "act")
    if pool == "average":
        y = g.node("AveragePool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    elif pool == "max":
        y = g.node("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    elif pool in ("average_padded", "average_padded_uncounted"):
        counted = int(pool == "average_padded")
        y = g.node(
            "AveragePool",
            [y],
            "pool",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            count_include_pad=counted,
        )
    elif pool == "global":
        y = g.node("GlobalAveragePool", [y], "pool")
    flat = g.node("Flatten", [y], "flatten", axis=1)
    n_flat = int(np.prod(ort_run(g.build(flat), _images(1, (2, 7, 7)))[0].shape[1:]))
    return g.build(g.gemm(flat, n_flat, 3, "fc"))


@pytest.mark.parametrize(
    ("conv_attrs", "pool", "batch_norm"),
    [
        ({"kernel_shape": [3, 3]}, None, False),
        ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "average", True),
        ({"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 0, 1]}, "global", False),
        ({"kernel_shape": [2, 2], "dilations": [2, 2]}, "average_padded", True),
        ({"kernel_shape": [3, 3], "group": 2, "pads": [1, 1, 1, 1]}, "average", False),
        ({"kernel_shape": [2, 2]}, "max", True),
    ],
    ids=["plain", "padded-bn-avgpool", "strided-global", "dilated-padded-pool", "grouped", "max"],
)
def test_conv_networks_match_onnxruntime(conv_attrs, pool, batch_norm) -> None:
    model = _conv_net(dict(conv_attrs), pool, batch_norm)
    program = program_from_onnx(model)
    assert program.input_shape == (2, 7, 7)
    assert program.layers[0].plan is not None
    x = _images(200, (2, 7, 7))
    assert_outputs_match(program.run(x.reshape(200, -1)), ort_run(model, x)[0], 0.01)


def test_the_network_of_every_op_matches_onnxruntime() -> None:
    model = _deep_net()
    program = program_from_onnx(model)
    assert program.layers[1].input_pool is not None
    x = _images(200, (2, 6, 6))
    assert_outputs_match(program.run(x.reshape(200, -1)), ort_run(model, x)[0], 0.01)


def test_padding_with_a_non_zero_zero_point_matches_onnxruntime() -> None:
    """Zero padding is the real value 0: for an input quantizer whose zero point is 3, not
    the integer 0. Padded positions have no column in the layer's map, and the zero point's
    offset counts only the inputs inside the image."""
    g = ImageGraph((2, 5, 5))
    x = g.quant("x", 0.4, False, "in", zero_point=3)
    y = g.conv(x, 2, 3, "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1])
    y = g.quant(g.node("Relu", [y], "relu"), 0.25, False, "act", zero_point=2)
    y = g.node(
        "AveragePool", [y], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    )
    model = g.build(g.gemm(g.node("Flatten", [y], "flat", axis=1), 3 * 3 * 5, 3, "fc"))
    x_rows = _images(200, (2, 5, 5))
    program = program_from_onnx(model)
    assert int(program.input_quantizer.zero_point) == 3
    assert_outputs_match(program.run(x_rows.reshape(200, -1)), ort_run(model, x_rows)[0], 0.01)


def test_a_pool_whose_divisor_varies_is_refused_before_a_layer_that_mixes_its_outputs() -> None:
    model = _conv_net({"kernel_shape": [3, 3]}, "average_padded_uncounted", False)
    with pytest.raises(UnsupportedOperatorError, match=r"'fc'.*count_include_pad=0"):
        program_from_onnx(model)


def test_a_pool_before_a_dense_layer_is_one_map_with_its_division_in_the_scale() -> None:
    model = _conv_net({"kernel_shape": [3, 3]}, "global", False)
    program = program_from_onnx(model)
    out = program.layers[1]
    # Global sum over 5x5 positions, then the Gemm: integer weights, 1/25 in the scale.
    assert [type(op).__name__ for op in out.plan.ops] == ["Conv2d", "Dense"]
    assert out.name == "fc"
    np.testing.assert_allclose(out.acc_scale, 0.25 * 0.11 / 25, rtol=1e-6)


def test_residual_additions_are_refused_clearly() -> None:
    g = ImageGraph((1, 6, 6))
    x = g.quant("x", 0.4, True, "in")
    y = g.quant(
        g.node("Relu", [g.conv(x, 1, 2, "conv1", pads=[1, 1, 1, 1])], "r1"), 0.2, False, "a"
    )
    z = g.conv(y, 2, 2, "conv2", pads=[1, 1, 1, 1])
    both = g.node("Add", [z, y], "residual")
    model = g.build(g.node("Flatten", [both], "flat", axis=1))
    with pytest.raises(InvalidModelError, match=r"feeds 2 nodes.*residual additions"):
        program_from_onnx(model)


# ----------------------------------------------------------------------------- the bound


def _two_channel_conv(strong: int) -> onnx.ModelProto:
    """A conv whose channel 1 has 3x3 weights all ``strong`` and channel 0 all 1, on a
    signed 3-bit input: channel 1's worst case is 9 * 4 * |strong| in magnitude."""
    g = ImageGraph((1, 5, 5))
    x = g.quant("x", 0.4, True, "in")
    kernel = np.stack([np.ones((1, 3, 3)), np.full((1, 3, 3), strong)]).astype(np.int8)
    w = g.node(
        "DequantizeLinear",
        [g.const(kernel), g.const(np.float32(0.1)), g.const(np.int8(0))],
        "w",
    )
    y = g.quant(g.node("Relu", [g.node("Conv", [x, w], "conv")], "relu"), 0.25, False, "act")
    flat = g.node("Flatten", [y], "flat", axis=1)
    return g.build(g.gemm(flat, 18, 2, "fc"))


def test_the_bound_is_per_channel_and_a_small_budget_names_the_channel() -> None:
    program = program_from_onnx(_two_channel_conv(-4))
    conv = program.layers[0]
    lo, hi = conv.neuron_ranges()
    # Channel 1 (rows 9..17): 9 weights of -4 on inputs in [-4, 3]: [-108, 144].
    assert lo[9:].min() == -108 and hi[9:].max() == 144
    assert hi[:9].max() == 27 and lo[:9].min() == -36
    x = _images(60, (1, 5, 5)).reshape(60, -1)
    with pytest.raises(AccumulatorOverflowError, match=r"'conv'.*in channel 1 \(1 of 2\)"):
        lower_program(program, x, n_accum_bits_options(8))
    lowered = lower_program(program, x, n_accum_bits_options(9))
    assert lowered.program.layers[0].plan is not None


def n_accum_bits_options(bits: int):
    from fheqnn.compiler.options import CompileOptions

    return CompileOptions(n_accum_bits=bits, rounding="off", p_error=1e-3)


# ----------------------------------------------------------------------------- dead channels


def test_a_pruned_filter_is_dropped_with_the_next_convolutions_input_channel() -> None:
    g = ImageGraph((1, 6, 6))
    x = g.quant("x", 0.4, True, "in")
    kernel = g.rng.integers(-3, 4, size=(3, 1, 3, 3)).astype(np.int8)
    kernel[1] = 0  # a pruned filter: its channel is a constant
    w = g.node(
        "DequantizeLinear", [g.const(kernel), g.const(np.float32(0.1)), g.const(np.int8(0))], "w"
    )
    bias = g.const(np.array([0.1, 0.35, -0.2], np.float32))
    y = g.quant(g.node("Relu", [g.node("Conv", [x, w, bias], "conv1")], "r1"), 0.25, False, "a1")
    y = g.quant(g.node("Relu", [g.conv(y, 3, 2, "conv2")], "r2"), 0.25, False, "a2")
    model = g.build(g.gemm(g.node("Flatten", [y], "flat", axis=1), 2 * 2 * 2, 3, "fc"))
    program = program_from_onnx(model)
    pruned, removed = drop_dead_neurons(program)
    assert removed == 16  # the 4x4 outputs of channel 1
    assert pruned.layers[0].n_outputs == 32
    assert pruned.layers[1].plan.ops[0].in_shape == (2, 4, 4)
    q = program.quantize_input(_images(100, (1, 6, 6)).reshape(100, -1))
    np.testing.assert_array_equal(pruned.run_integer(q), program.run_integer(q))


def test_a_constant_neuron_kept_in_a_partly_constant_channel_is_not_counted_twice() -> None:
    """One filter pruned to zero (a whole constant channel, dropped) and another whose only
    taps fall into the padding at the image's top row (constant there, not elsewhere): the
    kept constant neuron is read from its column, not folded into the offsets as well."""
    g = ImageGraph((1, 6, 6))
    x = g.quant("x", 0.4, True, "in")
    kernel = np.zeros((3, 1, 3, 3), dtype=np.int8)
    kernel[0] = g.rng.integers(-3, 4, size=(1, 3, 3))
    kernel[2, 0, 0, :] = [2, -3, 1]  # reads only the row above: padding at the top
    w = g.node(
        "DequantizeLinear", [g.const(kernel), g.const(np.float32(0.1)), g.const(np.int8(0))], "w"
    )
    bias = g.const(np.array([0.1, 0.35, 0.3], np.float32))
    conv = g.node("Conv", [x, w, bias], "conv1", pads=[1, 1, 1, 1], strides=[2, 2])
    y = g.quant(g.node("Relu", [conv], "r1"), 0.25, False, "a1")
    y = g.quant(g.node("Relu", [g.conv(y, 3, 2, "conv2")], "r2"), 0.25, False, "a2")
    model = g.build(g.gemm(g.node("Flatten", [y], "flat", axis=1), 2, 3, "fc"))
    program = program_from_onnx(model)
    pruned, removed = drop_dead_neurons(program)
    assert removed == 9  # channel 1 only: channel 2's top row stays
    q = program.quantize_input(_images(100, (1, 6, 6)).reshape(100, -1))
    np.testing.assert_array_equal(pruned.run_integer(q), program.run_integer(q))


def test_a_plan_whose_unread_outputs_are_wider_than_the_proof_is_computed_densely() -> None:
    """A convolution's second filter is large but no later weight reads it: its outputs are
    dropped, the proof covers the first filter's, and the circuit must hold nothing wider."""
    g = ImageGraph((1, 4, 4))
    x = g.quant("x", 0.4, True, "in")
    kernel = np.zeros((2, 1, 3, 3), dtype=np.int8)
    kernel[0, 0, 1, 1] = 1
    kernel[1] = -4  # 9 taps of -4 on [-4, 3]: [-108, 144], 9 bits
    w = g.node(
        "DequantizeLinear", [g.const(kernel), g.const(np.float32(0.1)), g.const(np.int8(0))], "w"
    )
    y = g.quant(g.node("Relu", [g.node("Conv", [x, w], "conv")], "r"), 0.25, False, "a")
    fc_w = np.zeros((2, 8), dtype=np.int8)
    fc_w[:, :4] = [[1, 2, -1, 3], [2, -2, 1, 1]]  # reads channel 0 only
    dq = g.node(
        "DequantizeLinear", [g.const(fc_w), g.const(np.float32(0.1)), g.const(np.int8(0))], "fw"
    )
    flat = g.node("Flatten", [y], "flat", axis=1)
    model = g.build(g.node("Gemm", [flat, dq], "fc", transB=1))
    full = program_from_onnx(model).layers[0]
    assert full.plan_fits()  # both filters proven: the wide one is in the proof
    lowered = lower_program(program_from_onnx(model), _images(60, (1, 4, 4)).reshape(60, -1))
    conv = lowered.program.layers[0]
    assert conv.n_outputs == 4 and conv.proven_range().bits <= 4
    assert not conv.plan_fits()
    assert "dense product (wider inside" in str(lowered.program)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile_onnx(model, _images(60, (1, 4, 4)), exact=True)
    q = compiled.quantize(_images(20, (1, 4, 4), seed=1))
    np.testing.assert_array_equal(compiled.run_integer(q, "simulate"), compiled.run_integer(q))
    measured = compiled.report.layers[0]
    assert measured.proven_lo <= measured.measured_lo <= measured.measured_hi <= measured.proven_hi


# ----------------------------------------------------------------------------- saving, rows


def test_saved_conv_programs_round_trip_and_a_tampered_plan_is_refused() -> None:
    program = program_from_onnx(_conv_net({"kernel_shape": [3, 3]}, "average", True))
    saved = program_to_dict(program)
    assert saved["format"] == 3 and saved["input_shape"] == [2, 7, 7]
    again = program_from_dict(saved)
    q = program.quantize_input(_images(20, (2, 7, 7)).reshape(20, -1))
    np.testing.assert_array_equal(again.run_integer(q), program.run_integer(q))
    assert again.input_shape == (2, 7, 7)
    saved["layers"][0]["plan"]["ops"][0]["strides"] = [2, 2]
    with pytest.raises(ValueError, match="saved plan does not compute its saved weights"):
        program_from_dict(saved)


def test_the_client_takes_image_rows_or_flat_rows_and_refuses_other_shapes() -> None:
    program = program_from_onnx(_conv_net({"kernel_shape": [3, 3]}, None, False))
    contract = ClientContract.from_program(program)
    images = _images(4, (2, 7, 7))
    np.testing.assert_array_equal(
        contract.quantize(images), contract.quantize(images.reshape(4, -1))
    )
    again = ClientContract.from_dict(contract.to_dict())
    assert again.input_shape == (2, 7, 7)
    with pytest.raises(InvalidInputError, match=r"rows of shape \(2, 7, 6\), expected"):
        contract.quantize(images[..., :6])
    with pytest.raises(InvalidInputError, match=r"\(n_rows, 2, 7, 7\)"):
        contract.quantize(images[0])


# ----------------------------------------------------------------------------- Concrete


def _deep_net() -> onnx.ModelProto:
    """in quant -> Conv 3x3 pad 1 -> BN -> Relu -> quant -> MaxPool 2x2 -> Conv 2x2 -> Relu ->
    quant -> GlobalAveragePool -> Flatten -> Gemm: every op of the front end once."""
    g = ImageGraph((2, 6, 6))
    x = g.quant("x", 0.4, True, "in")
    y = g.conv(x, 2, 4, "conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    params = [g.const(g.rng.uniform(0.5, 1.5, 4).astype(np.float32)) for _ in range(2)]
    stats = [g.const(g.rng.uniform(0.5, 1.0, 4).astype(np.float32)) for _ in range(2)]
    y = g.node("BatchNormalization", [y, *params, *stats], "bn")
    y = g.quant(g.node("Relu", [y], "relu1"), 0.25, False, "a1")
    y = g.node("MaxPool", [y], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.quant(
        g.node("Relu", [g.conv(y, 4, 3, "conv2", kernel_shape=[2, 2])], "r2"), 0.3, False, "a2"
    )
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y], "gap")], "flat", axis=1)
    return g.build(g.gemm(y, 3, 3, "fc"))


@pytest.fixture(scope="module")
def compiled_conv():
    """The network of every op, compiled at the bit-exact profile."""
    x = _images(120, (2, 6, 6), seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_onnx(_deep_net(), x, exact=True)


@pytest.mark.slow
def test_concrete_simulation_equals_the_interpreter_and_measures_within_the_proof(
    compiled_conv,
) -> None:
    model = compiled_conv
    rows = _images(30, (2, 6, 6), seed=4)
    q = model.quantize(rows)
    np.testing.assert_array_equal(model.run_integer(q, "simulate"), model.run_integer(q))
    report = model.report
    assert report.ok
    for layer in report.layers:
        assert layer.measured_lo is not None
        assert layer.proven_lo <= layer.measured_lo <= layer.measured_hi <= layer.proven_hi
    assert model.pbs_count >= sum(layer.n_outputs for layer in model.program.layers[:-1])


@pytest.mark.slow
def test_the_network_of_every_op_runs_encrypted(compiled_conv) -> None:
    model = compiled_conv
    rows = _images(2, (2, 6, 6), seed=5)
    np.testing.assert_array_equal(model.predict_raw(rows, "execute"), model.predict_raw(rows))


@pytest.fixture(scope="module")
def tiny_conv():
    """A tiny conv network with padding and a max pool, compiled at the bit-exact profile."""
    g = ImageGraph((1, 4, 4))
    x = g.quant("x", 0.4, True, "in")
    y = g.conv(x, 1, 2, "conv", kernel_shape=[2, 2], pads=[1, 1, 0, 0])
    y = g.quant(g.node("Relu", [y], "relu"), 0.25, False, "act")
    y = g.node("MaxPool", [y], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    model = g.build(g.gemm(g.node("Flatten", [y], "flat", axis=1), 8, 2, "fc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_onnx(model, _images(60, (1, 4, 4), seed=8), exact=True)


def test_a_tiny_conv_network_with_padding_and_max_pool_simulates_as_the_interpreter(
    tiny_conv,
) -> None:
    assert tiny_conv.program.layers[1].input_pool is not None
    q = tiny_conv.quantize(_images(40, (1, 4, 4), seed=9))
    np.testing.assert_array_equal(tiny_conv.run_integer(q, "simulate"), tiny_conv.run_integer(q))


@pytest.mark.slow
def test_a_tiny_conv_network_with_padding_and_max_pool_runs_encrypted(tiny_conv) -> None:
    rows = _images(1, (1, 4, 4), seed=9)
    np.testing.assert_array_equal(
        tiny_conv.predict_raw(rows, "execute"), tiny_conv.predict_raw(rows)
    )


def test_foreign_brevitas_cnn_reads_and_matches_its_torch_forward() -> None:
    import brevitas.nn as qnn

    from fheqnn.model.export import export_qcdq

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=3, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(1, 3, 3, padding=1, weight_bit_width=2, bias=True)
            self.bn = torch.nn.BatchNorm2d(3)
            self.relu = qnn.QuantReLU(bit_width=3, return_quant_tensor=True)
            self.pool = torch.nn.AvgPool2d(2)
            self.fc = qnn.QuantLinear(3 * 3 * 3, 4, weight_bit_width=2, bias=True)

        def forward(self, x):
            x = self.pool(self.relu(self.bn(self.conv(self.inp(x)))))
            return self.fc(torch.flatten(x, 1))

    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    model = export_qcdq(net, torch.zeros(1, 1, 6, 6))
    program = program_from_onnx(model)
    x = _images(100, (1, 6, 6), seed=6)
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    assert_outputs_match(program.run(x.reshape(100, -1)), expected, 0.02)
    # A budget below its convolution's proven width is refused before anything is compiled,
    # naming the channels that do not fit; one that holds every layer is accepted.
    proven = [layer.proven_range().bits for layer in program.layers]
    with pytest.raises(AccumulatorOverflowError, match=r"in channels? [\d, ]+\(\d of 3\)"):
        lower_program(program, x.reshape(100, -1), n_accum_bits_options(min(proven) - 1))
    lower_program(program, x.reshape(100, -1), n_accum_bits_options(max(proven)))
