"""Concrete ML 1.9 compiling the same brevitas convolutional module as fheqnn (issue 28).

Runs in the reference environment (see ``benchmarks/reference.py``), started by
``benchmarks/conv_compare.py``, which trains the network with fheqnn and saves it with the
data (``--bundle``, a ``torch.save`` file). fheqnn is not importable here, so the network is
rebuilt from brevitas' own layers in the same layout as
``fheqnn.model.conv_module.SparseQuantConvNetwork`` and given the trained state dict; the
script checks that the rebuilt module computes the same outputs before compiling it with
``compile_brevitas_qat_model`` at Concrete ML's defaults (no rounding, error probability 2**-40
per lookup). Prints one JSON line: accuracy clear / simulated (mean of 10 passes) / encrypted,
unstable rows, PBS, compile s, keygen s, evaluation key MB, single-row latency (median).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from reference_measures import measure_circuit


def build(config: dict):
    """The network in ``SparseQuantConvNetwork``'s layout, from brevitas' layers."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
    from torch import nn

    def quantizer():
        return qnn.QuantIdentity(
            bit_width=config["n_a_bits"],
            return_quant_tensor=True,
            narrow_range=config["quant_narrow"],
            signed=config["quant_signed"],
        )

    def weights():
        return {
            "weight_quant": Int8WeightPerChannelFloat
            if config["weight_per_channel"]
            else Int8WeightPerTensorFloat,
            "weight_bit_width": config["n_w_bits"],
            "weight_narrow_range": config["quant_narrow"],
            "bias_quant": None,
        }

    features = nn.Sequential()
    c_in, height, width = config["input_shape"]
    kernel = config["kernel_size"]
    pad = kernel // 2
    for idx, (c_out, stride) in enumerate(zip(config["channels"], config["strides"], strict=True)):
        features.add_module(f"quant{idx}", quantizer())
        conv = qnn.QuantConv2d(
            c_in, c_out, kernel, stride=stride, padding=pad, bias=True, **weights()
        )
        features.add_module(f"conv{idx}", conv)
        features.add_module(f"act{idx}", nn.ReLU())
        height = (height + 2 * pad - kernel) // stride + 1
        width = (width + 2 * pad - kernel) // stride + 1
        c_in = c_out
    n_in = c_in * height * width
    # As SparseQuantConvNetwork: the first quantizer after the convolutions, then flatten.
    names = [f"quant_fc{idx}" for idx in range(len(config["hidden"]))]
    names.append(f"quant{len(config['channels'])}")
    features.add_module(names[0], quantizer())
    features.add_module("flatten", nn.Flatten())
    for idx, n_out in enumerate(config["hidden"]):
        if idx:
            features.add_module(names[idx], quantizer())
        features.add_module(f"fc{idx}", qnn.QuantLinear(n_in, n_out, bias=True, **weights()))
        features.add_module(f"act_fc{idx}", nn.ReLU())
        n_in = n_out
    if config["hidden"]:
        features.add_module(names[-1], quantizer())
    features.add_module("fc", qnn.QuantLinear(n_in, config["n_outputs"], bias=True, **weights()))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features

        def forward(self, x):
            out = self.features(x)
            return out.value if hasattr(out, "value") else out

    return Net()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the file conv_compare.py saved")
    parser.add_argument("--rows", type=int, default=5, help="encrypted rows timed (median)")
    args = parser.parse_args()

    import torch
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    bundle = torch.load(args.bundle, weights_only=False)
    torch.manual_seed(0)
    net = build(bundle["config"])
    result = net.load_state_dict(bundle["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"state dict mismatch: {result.missing_keys} {result.unexpected_keys}")
    net.eval()
    x_tr, x_te = bundle["x_train"], bundle["x_test"]
    y_te = bundle["y_test"]
    with torch.no_grad():
        logits = net(torch.tensor(x_te)).numpy()
    row: dict = {"system": "concrete-ml 1.9 compile_brevitas_qat_model", "seed": bundle["seed"]}
    row["load"] = os.getloadavg()[0]
    # The same module: its outputs equal fheqnn's torch outputs (float32 ties aside).
    row["same_module_max_abs_diff"] = float(np.abs(logits - bundle["test_logits"]).max())
    row["same_module_label_agreement"] = float(
        np.mean(logits.argmax(1) == bundle["test_logits"].argmax(1))
    )
    if row["same_module_label_agreement"] < 0.99 or row["same_module_max_abs_diff"] > 1e-2:
        raise SystemExit(f"the rebuilt module is not fheqnn's: {row}")
    row["acc_clear"] = float(np.mean(logits.argmax(1) == y_te))
    start = time.perf_counter()
    qm = compile_brevitas_qat_model(net, torch.tensor(x_tr))
    row["compile_s"] = time.perf_counter() - start
    circuit = qm.fhe_circuit
    row["pbs"] = int(circuit.programmable_bootstrap_count)
    measure_circuit(
        row, circuit, lambda x, fhe: qm.forward(x, fhe=fhe).argmax(1), x_te, y_te, args.rows
    )
    row["load_after"] = os.getloadavg()[0]
    print(json.dumps(row))


if __name__ == "__main__":
    main()
