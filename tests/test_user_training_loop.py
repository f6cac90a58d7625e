"""The seed module under a user's own torch training loop (issue 9, part 1).

Written the way a user of the reference would: build the module, train it with a plain Adam loop,
export it with brevitas' QCDQ exporter, compile the file under the module's own budget.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import fheqnn
from fheqnn import SparseQuantNeuralNetwork
from fheqnn.model.export import EXPORT_OPSET, export_module_to_onnx


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[np.ndarray, ...]:
    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    return scaler.transform(x_tr), scaler.transform(x_te), y_tr, y_te


def _user_loop(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 120) -> None:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    inputs = torch.tensor(x, dtype=torch.float32)
    targets = torch.tensor(y)
    module.train()
    for _ in range(steps):
        idx = torch.randint(0, len(inputs), (64,))
        loss = torch.nn.functional.cross_entropy(module(inputs[idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _export(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        # brevitas' export imports and the TorchScript tracer warn (deprecations, optional GPU
        # kernels absent, tracer details); none of it concerns this MLP.
        warnings.simplefilter("ignore")
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(
            module,
            args=torch.zeros(1, module.input_dim),
            export_path=str(path),
            opset_version=EXPORT_OPSET,
            dynamo=False,
        )


def _exported_integer_weights(path: Path) -> list[np.ndarray]:
    """The Gemm weights of the file as integers (out, in), read before their DequantizeLinear."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    produced = {out: node for node in model.graph.node for out in node.output}
    weights = []
    for node in model.graph.node:
        if node.op_type != "Gemm":
            continue
        source = produced[node.input[1]]
        while source.op_type != "DequantizeLinear":
            source = produced[source.input[0]]
        data = source.input[0]
        while data not in inits and produced[data].op_type != "Constant":
            data = produced[data].input[0]
        if data in inits:
            w = inits[data].astype(np.int64)
        else:
            value = next(a.t for a in produced[data].attribute if a.name == "value")
            w = numpy_helper.to_array(value).astype(np.int64)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        weights.append(w if trans_b else w.T)
    return weights


@pytest.mark.slow
@pytest.mark.parametrize(("w_bits", "a_bits", "accum_bits"), [(3, 3, 8), (4, 4, 10)])
def test_plain_adam_loop_compiles_within_the_budget(
    breast_cancer, tmp_path: Path, w_bits: int, a_bits: int, accum_bits: int
) -> None:
    x_tr, x_te, y_tr, y_te = breast_cancer
    torch.manual_seed(0)
    module = SparseQuantNeuralNetwork(
        30, 3, 2, n_w_bits=w_bits, n_a_bits=a_bits, n_accum_bits=accum_bits
    )
    _user_loop(module, x_tr, y_tr)
    path = tmp_path / "user.onnx"
    _export(module, path)

    k = module.max_active_neurons()
    weights = _exported_integer_weights(path)
    assert len(weights) == 3
    assert [w.shape for w in weights] == [(120, 30), (120, 120), (2, 120)]
    for w in weights:
        assert int((w != 0).sum(axis=1).max()) <= k

    model = fheqnn.compile_onnx(path, x_tr, n_accum_bits=module.n_accum_bits)
    assert max(row.proven_bits for row in model.report.layers) <= accum_bits
    predictions = model.predict(x_te, fhe="simulate")
    accuracy = float(np.mean(predictions.argmax(axis=1) == y_te))
    assert accuracy >= 0.90


def test_our_exporter_applies_live_masks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = SparseQuantNeuralNetwork(30, 3, 2, n_prune_neurons_percentage=0.5)
    module(torch.randn(64, 30) * 2)  # a training pass: masks follow the weights
    assert module.pruning_enabled
    export_module_to_onnx(module, tmp_path / "live.onnx")
    weights = _exported_integer_weights(tmp_path / "live.onnx")
    k = module.max_active_neurons()
    assert [int((w != 0).sum(axis=1).max()) for w in weights] == [k, k, k]
    # Half of each hidden layer's neurons are pruned: their rows are all zero.
    assert [int((w != 0).any(axis=1).sum()) for w in weights[:2]] == [60, 60]
