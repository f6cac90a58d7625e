"""SparseQuantNeuralNetwork: the seed API, its errors, and the per-neuron accumulator bound."""

from __future__ import annotations

import inspect

import brevitas.nn as qnn
import pytest
import torch
from torch import nn

import fheqnn
from fheqnn import MAX_BITWIDTH_BACKWARD_COMPATIBLE, SparseQuantNeuralNetwork
from fheqnn.intervals import bits_for_range

SEED_SIGNATURE = [
    ("input_dim", inspect.Parameter.empty),
    ("n_layers", inspect.Parameter.empty),
    ("n_outputs", inspect.Parameter.empty),
    ("n_hidden_neurons_multiplier", 4),
    ("n_w_bits", 3),
    ("n_a_bits", 3),
    ("n_accum_bits", 8),
    ("n_prune_neurons_percentage", 0.0),
    ("activation_function", nn.ReLU),
    ("quant_narrow", False),
    ("quant_signed", True),
]


def test_constructor_signature_is_the_seed_one() -> None:
    params = list(inspect.signature(SparseQuantNeuralNetwork.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == SEED_SIGNATURE


def test_global_and_public_methods() -> None:
    assert MAX_BITWIDTH_BACKWARD_COMPATIBLE == 8
    assert fheqnn.MAX_BITWIDTH_BACKWARD_COMPATIBLE == 8
    for name in ("max_active_neurons", "enable_pruning", "make_pruning_permanent", "forward"):
        assert callable(getattr(SparseQuantNeuralNetwork, name))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_dim": 0}, "input_dim must be >= 1, got 0"),
        ({"n_layers": 0}, "n_layers must be >= 1, got 0"),
        ({"n_outputs": 0}, "n_outputs must be >= 1, got 0"),
        ({"n_layers": 2.5}, "n_layers must be an int"),
        ({"n_w_bits": 0}, r"n_w_bits must be in \[2, 16\], got 0"),
        ({"n_w_bits": 1}, r"n_w_bits must be in \[2, 16\], got 1"),
        ({"n_a_bits": 0}, r"n_a_bits must be in \[2, 16\], got 0"),
        ({"n_hidden_neurons_multiplier": 0}, "n_hidden_neurons_multiplier must be a number > 0"),
        ({"n_hidden_neurons_multiplier": -1}, "got -1"),
        ({"n_prune_neurons_percentage": -0.1}, r"must be a number in \[0, 1\), got -0.1"),
        ({"n_prune_neurons_percentage": 1.0}, r"must be a number in \[0, 1\), got 1.0"),
        ({"activation_function": nn.ReLU()}, "activation_function must be a torch.nn.Module class"),
        ({"activation_function": "relu"}, "got 'relu'"),
        ({"n_accum_bits": 0}, r"n_accum_bits must be in \[1, 32\]"),
        # 3-bit products reach 16 (5 unsigned / 6 signed bits): not even one fits in 4 bits.
        ({"n_accum_bits": 4}, "n_accum_bits=4 is too small"),
        ({"quant_signed": "yes"}, "quant_signed must be a bool"),
    ],
)
def test_invalid_parameters_raise_value_error(kwargs: dict, match: str) -> None:
    args = {"input_dim": 4, "n_layers": 2, "n_outputs": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        SparseQuantNeuralNetwork(**args)


def test_unsigned_activations_accept_one_bit() -> None:
    net = SparseQuantNeuralNetwork(4, 2, 2, n_a_bits=1, quant_signed=False, n_accum_bits=6)
    assert net.max_active_neurons() >= 1


def test_layout_follows_the_parameters() -> None:
    net = SparseQuantNeuralNetwork(5, 3, 2, n_hidden_neurons_multiplier=3, n_w_bits=4, n_a_bits=2)
    names = [name for name, _ in net.features.named_children()]
    assert names == ["quant0", "fc0", "act0", "quant1", "fc1", "act1", "quant2", "fc2"]
    fcs = net.linear_layers()
    assert all(isinstance(fc, qnn.QuantLinear) for fc in fcs)
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(5, 15), (15, 15), (15, 2)]
    assert isinstance(net.features.act0, nn.ReLU)
    for fc in fcs:
        q = fc.quant_weight()
        assert int(q.bit_width) == 4
        assert float(q.zero_point.abs().max()) == 0.0
    out = net.features.quant0(torch.randn(7, 5))
    assert int(out.bit_width) == 2 and bool(out.signed)
    assert net(torch.randn(7, 5)).shape == (7, 2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # inputs and weights in [-4, 3] -> products in [-12, 16]: 128 // 12 = 10, 127 // 16 = 7
        ({}, 7),
        # narrow: [-3, 3] x [-3, 3] -> [-9, 9]: 127 // 9 = 14
        ({"quant_narrow": True}, 14),
        # 4-bit: [-8, 7] x [-8, 7] -> [-56, 64]; 12 bits: 2048 // 56 = 36, 2047 // 64 = 31
        ({"n_w_bits": 4, "n_a_bits": 4, "n_accum_bits": 12}, 31),
        # unsigned 3-bit inputs [0, 7] x weights [-4, 3] -> [-28, 21]: 128 // 28 = 4, 127 // 21 = 6
        ({"quant_signed": False}, 4),
        # a single layer sees only the (signed) inputs
        ({"n_layers": 1}, 7),
    ],
)
def test_max_active_neurons_known_values(kwargs: dict, expected: int) -> None:
    args = {"input_dim": 4, "n_layers": 3, "n_outputs": 2, **kwargs}
    assert SparseQuantNeuralNetwork(**args).max_active_neurons() == expected


def _assert_every_neuron_fits(net: SparseQuantNeuralNetwork) -> None:
    """Check the bound on the integers that will really run, neuron by neuron."""
    k = net.max_active_neurons()
    for idx, w in enumerate(net.integer_weights()):
        assert int((w != 0).sum(dim=1).max()) <= k
        x_range = net.layer_input_int_range(idx)
        w_range = net.weight_int_range()
        assert int(w.min()) >= w_range.lo and int(w.max()) <= w_range.hi
        # Worst case of each neuron from its own integer weights.
        hi = (w.clamp(min=0) * x_range.hi + w.clamp(max=0) * x_range.lo).sum(dim=1)
        lo = (w.clamp(min=0) * x_range.lo + w.clamp(max=0) * x_range.hi).sum(dim=1)
        for neuron_lo, neuron_hi in zip(lo.tolist(), hi.tolist(), strict=True):
            assert bits_for_range(min(neuron_lo, 0), max(neuron_hi, 0)) <= net.n_accum_bits


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"quant_narrow": True},
        {"n_w_bits": 4, "n_a_bits": 4, "n_accum_bits": 10},
        {"quant_signed": False, "activation_function": nn.Tanh},
        {"n_accum_bits": 6, "n_w_bits": 2, "n_a_bits": 2, "activation_function": nn.SELU},
    ],
)
def test_every_neuron_respects_the_bound_during_training(kwargs: dict) -> None:
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(12, 3, 3, **kwargs)
    _assert_every_neuron_fits(net)
    x, y = torch.randn(64, 12) * 3, torch.randint(0, 3, (64,))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(15):
        net.set_straight_through_masks(step % 2 == 0)
        net.freeze_pruning_masks(step > 10)
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 3:
            net.update_pruning_masks()
        # The forward pass after every step only uses weights allowed by the masks.
        _assert_every_neuron_fits(net)
    net.make_pruning_permanent()
    _assert_every_neuron_fits(net)


def test_measured_accumulators_fit_on_extreme_inputs() -> None:
    """Drive real quantized activations through the integer layers and measure the sums."""
    torch.manual_seed(1)
    net = SparseQuantNeuralNetwork(8, 2, 2)
    net.enable_pruning()
    net.make_pruning_permanent()
    net.eval()
    x = torch.cat([torch.randn(200, 8) * 10, torch.full((1, 8), -100.0), torch.full((1, 8), 100.0)])
    q_in = net.features.quant0(x)
    acc = q_in.int().to(torch.int64) @ net.integer_weights()[0].T
    assert bits_for_range(int(acc.min()), int(acc.max())) <= net.n_accum_bits


def test_structured_pruning_removes_neurons_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(
        6, 3, 2, n_hidden_neurons_multiplier=2, n_prune_neurons_percentage=0.5
    )
    net.enable_pruning()
    kept = net.neuron_masks()
    assert [int(m.sum()) for m in kept] == [6, 6]
    # The removed neurons are those of smallest incoming weight norm.
    norms = net.features.fc0.weight_orig.detach().norm(dim=1)
    assert norms[kept[0]].min() >= norms[~kept[0]].max()
    net.eval()
    x = torch.randn(32, 6)
    before = net(x).detach()
    net.make_pruning_permanent()
    after = net(x).detach()
    assert net.hidden_widths() == [6, 6]
    assert [(fc.in_features, fc.out_features) for fc in net.linear_layers()] == [
        (6, 6),
        (6, 6),
        (6, 2),
    ]
    assert torch.equal(before, after)
    assert not net.pruning_enabled
    _assert_every_neuron_fits(net)


def test_construction_enables_pruning_and_enable_is_idempotent() -> None:
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(20, 2, 2)
    assert net.pruning_enabled
    k = net.max_active_neurons()
    assert all(int((w != 0).sum(dim=1).max()) <= k for w in net.integer_weights())
    masks = [fc.weight_mask.clone() for fc in net.linear_layers()]
    net.enable_pruning()
    net.enable_pruning()
    layers = net.linear_layers()
    assert all(torch.equal(m, fc.weight_mask) for m, fc in zip(masks, layers, strict=True))


def test_fresh_module_prunes_the_requested_neurons() -> None:
    """Regression (issue 9): a fresh module with 50 % kept all its neurons at permanence."""
    net = SparseQuantNeuralNetwork(20, 3, 2, n_prune_neurons_percentage=0.5)
    net.make_pruning_permanent()
    assert net.hidden_widths() == [40, 40]
    assert not net.pruning_enabled
    net.make_pruning_permanent()  # no-op once permanent
    assert net.hidden_widths() == [40, 40]
    # Enabling again installs masks but does not remove half of what is left.
    net.enable_pruning()
    net.make_pruning_permanent()
    assert net.hidden_widths() == [40, 40]
    _assert_every_neuron_fits(net)


def test_update_masks_requires_pruning() -> None:
    net = SparseQuantNeuralNetwork(4, 2, 2)
    net.make_pruning_permanent()
    with pytest.raises(ValueError, match="enable_pruning"):
        net.update_pruning_masks()


def test_training_passes_rechoose_masks_and_eval_or_frozen_ones_do_not() -> None:
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(20, 2, 2)
    fc0 = net.features.fc0
    masked_out = (~fc0.weight_mask[0]).nonzero()[0].item()
    with torch.no_grad():
        fc0.weight_orig[0, masked_out] = 100.0
    net.eval()
    net(torch.randn(3, 20))
    assert not bool(fc0.weight_mask[0, masked_out])
    net.freeze_pruning_masks()
    net.train()
    net(torch.randn(3, 20))
    assert not bool(fc0.weight_mask[0, masked_out])
    net.freeze_pruning_masks(False)
    net(torch.randn(3, 20))
    assert bool(fc0.weight_mask[0, masked_out])
    assert int(fc0.weight_mask[0].sum()) == net.max_active_neurons()


def test_masks_follow_the_weights() -> None:
    """A weight that becomes the largest of its row is selected at the next update."""
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(20, 2, 2)
    net.enable_pruning()
    fc0 = net.features.fc0
    masked_out = (~fc0.weight_mask[0]).nonzero()[0].item()
    with torch.no_grad():
        fc0.weight_orig[0, masked_out] = 100.0
    net.update_pruning_masks()
    assert bool(fc0.weight_mask[0, masked_out])
    assert int(fc0.weight_mask[0].sum()) == net.max_active_neurons()


@pytest.mark.parametrize("permanent", [False, True])
def test_pickling_mid_training_and_after(permanent: bool) -> None:
    """A network pickles with its masks on (mid-training) or off, and comes back identical."""
    import pickle

    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(6, 3, 2, n_prune_neurons_percentage=0.5)
    net(torch.randn(16, 6))  # a training pass: masks re-chosen, activation stats collected
    if permanent:
        net.make_pruning_permanent()
    net.eval()
    copy = pickle.loads(pickle.dumps(net))
    assert copy.pruning_enabled is not permanent
    assert copy.hidden_widths() == net.hidden_widths()
    x = torch.randn(5, 6)
    assert torch.equal(copy(x), net(x))
    if not permanent:
        assert all(
            torch.equal(a.weight_mask, b.weight_mask)
            for a, b in zip(copy.linear_layers(), net.linear_layers(), strict=True)
        )
        copy.make_pruning_permanent()
        net.make_pruning_permanent()
        assert copy.hidden_widths() == net.hidden_widths() == [12, 12]
        assert torch.equal(copy(x), net(x))


def test_permanent_pruning_keeps_the_neurons_in_force() -> None:
    """Regression: weights that move after the last mask update (frozen masks) must not change
    which neurons make_pruning_permanent keeps."""
    torch.manual_seed(0)
    net = SparseQuantNeuralNetwork(
        6, 2, 2, n_hidden_neurons_multiplier=2, n_prune_neurons_percentage=0.5
    )
    net.enable_pruning()
    kept = net.neuron_masks()[0]
    fc0 = net.features.fc0
    with torch.no_grad():
        # Shrink every kept neuron below the pruned ones: a fresh choice would swap them.
        fc0.weight_orig[kept] *= 1e-3
    net.eval()
    x = torch.randn(16, 6)
    before = net(x).detach()
    net.make_pruning_permanent()
    assert torch.equal(net(x).detach(), before)
