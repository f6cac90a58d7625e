"""The sparse quantized convolutional network: its per-filter bound, masks that keep it under
training, and the path from a trained network to a proven, compiled program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fheqnn.compiler.lowering import lower_program
from fheqnn.compiler.onnx_frontend import program_from_onnx
from fheqnn.compiler.options import CompileOptions
from fheqnn.errors import InvalidParameterError
from fheqnn.model.conv_module import SparseQuantConvNetwork
from fheqnn.model.export import export_qcdq
from fheqnn.model.training_recipe import TrainingConfig, fit_with_skorch


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 6x6 images: a bright left half or a bright right half, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0, 0.4, size=(n, 1, 6, 6))
    x[y == 0, :, :, :3] += 1.5
    x[y == 1, :, :, 3:] += 1.5
    return x.astype(np.float32), y.astype(np.int64)


def _nonzeros_per_filter(layer: torch.nn.Module) -> torch.Tensor:
    return (layer.weight != 0).flatten(1).sum(dim=1)


def test_every_filter_keeps_at_most_its_bound_from_construction_and_under_training() -> None:
    torch.manual_seed(0)
    net = SparseQuantConvNetwork((1, 6, 6), 2, channels=(4, 6), n_accum_bits=8)
    # 3-bit signed weights and inputs: products in [-12, 16], 7 of them fit 8 bits. After a
    # ReLU the signed quantizer gives only [0, 3]: products in [-12, 9], 10 of them fit.
    assert [net.max_active_weights(i) for i in range(3)] == [7, 10, 10]
    for layer, k in zip(net.masked_layers(), (7, 10, 10), strict=True):
        assert int(_nonzeros_per_filter(layer).max()) <= k
    x, y = _images(40)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    net.train()
    for _ in range(5):  # a plain loop, not ours: the masks follow the weights anyway
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y)).backward()
        optimizer.step()
    net.eval()
    for layer, k in zip(net.masked_layers(), (7, 10, 10), strict=True):
        assert int(_nonzeros_per_filter(layer).max()) <= k


def test_pruned_filters_are_zero_and_their_channels_never_read() -> None:
    torch.manual_seed(1)
    net = SparseQuantConvNetwork(
        (1, 6, 6), 2, channels=(4, 4), n_prune_neurons_percentage=0.5, strides=(1, 2)
    )
    kept = net.neuron_masks()
    assert [int(k.sum()) for k in kept] == [2, 2]
    conv0, conv1, fc = net.masked_layers()
    assert not conv0.weight[~kept[0]].any()
    assert not conv1.weight[:, ~kept[0]].any()  # the next convolution never reads them
    positions = 3 * 3
    assert not fc.weight[:, ~kept[1].repeat_interleave(positions)].any()


def test_a_trained_network_compiles_with_every_accumulator_proven_within_budget() -> None:
    x, y = _images(120)
    torch.manual_seed(2)
    net = SparseQuantConvNetwork((1, 6, 6), 2, channels=(3, 4), n_prune_neurons_percentage=0.25)
    result = fit_with_skorch(
        net,
        x,
        y,
        torch.nn.CrossEntropyLoss(),
        TrainingConfig(max_epochs=40, verbose=False),
        seed=0,
        validation_fraction=None,
        patience=5,
        stratify=True,
        callbacks=[],
    )
    trained = result.module
    assert not trained.pruning_enabled
    with torch.no_grad():
        clear = trained(torch.tensor(x)).argmax(1).numpy()
    assert (clear == y).mean() > 0.8  # an easy task: the network learned it
    program = program_from_onnx(export_qcdq(trained, torch.zeros(1, 1, 6, 6)))
    assert program.input_shape == (1, 6, 6)
    for layer in program.layers:
        assert layer.proven_range().bits <= 8
        assert layer.max_nonzeros() <= 10
    flat = x.reshape(len(x), -1)
    lowered = lower_program(program, flat, CompileOptions(n_accum_bits=8, rounding="off"))
    # A pruned filter is a constant channel: the compiler drops its lookups.
    assert lowered.removed_neurons >= 3 * 3
    with torch.no_grad():
        expected = trained(torch.tensor(x)).numpy()
    # The compiled program is the network, up to float32 rounding at quantization ties.
    agree = np.isclose(lowered.program.run(flat), expected, rtol=1e-4, atol=1e-4).all(axis=1)
    assert agree.mean() >= 0.98


def test_a_network_pickles_while_training_and_after_pruning_is_permanent() -> None:
    import pickle

    torch.manual_seed(3)
    net = SparseQuantConvNetwork((1, 6, 6), 2, channels=(3, 4), n_prune_neurons_percentage=0.25)
    x = torch.tensor(_images(8)[0])
    net.eval()
    for state in ("masks", "permanent"):
        if state == "permanent":
            net.make_pruning_permanent()
        copy = pickle.loads(pickle.dumps(net))
        assert copy.pruning_enabled == net.pruning_enabled
        with torch.no_grad():
            torch.testing.assert_close(copy(x), net(x))
        for a, b in zip(copy.masked_layers(), net.masked_layers(), strict=True):
            torch.testing.assert_close(a.weight, b.weight)


def test_bad_arguments_are_refused_with_their_name() -> None:
    with pytest.raises(InvalidParameterError, match="input_shape"):
        SparseQuantConvNetwork((8, 8), 10)
    with pytest.raises(InvalidParameterError, match="strides"):
        SparseQuantConvNetwork((1, 8, 8), 10, channels=(4, 8), strides=(2,))
    with pytest.raises(InvalidParameterError, match="n_accum_bits=4 is too small"):
        SparseQuantConvNetwork((1, 8, 8), 10, n_accum_bits=4)
