"""``demo``: the whole flow on a shipped data set."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from .client import _encrypted_predict
from .common import EXIT_OK, _say, _Step
from .compile import _compile_speaking
from .options import _compile_options
from .train import _estimator, check_model_options


def cmd_demo(args: argparse.Namespace) -> int:
    from ..contract import range_warnings_off

    # A shipped data set's own split: its rare far values (a digits pixel) are the data's.
    with range_warnings_off():
        return _demo(args)


def demo_dataset(args: argparse.Namespace) -> str:
    """The data set the demo runs on: ``--dataset``, else the model's own default."""
    if args.dataset:
        return str(args.dataset)
    return "digits" if args.model == "conv" else "breast_cancer"


def demo_folder_name(args: argparse.Namespace) -> str:
    """The folder (under ``--circuits`` and ``--keys``) the demo writes and replaces."""
    prefix = "demo_conv_" if args.model == "conv" else "demo_"
    return prefix + demo_dataset(args)


def _load(args: argparse.Namespace, dataset: str) -> tuple[np.ndarray, ...]:
    """The benchmark split: standardized rows for the MLP, raw images (n, 1, 8, 8) for the
    convolutional network, which learns its own per-channel scaling."""
    from ..datasets import load_split

    if args.model != "conv":
        return load_split(dataset)
    x_tr, x_te, y_tr, y_te = load_split(dataset, standardize=False)
    side = math.isqrt(x_tr.shape[1])  # digits: 64 pixels, 8x8
    return x_tr.reshape(-1, 1, side, side), x_te.reshape(-1, 1, side, side), y_tr, y_te


def _demo(args: argparse.Namespace) -> int:
    from ..bench.measure import (
        integer_accuracy,
        key_measures,
        round_trip_measures,
        simulated_measures,
        single_row_latency,
        summary_measures,
    )
    from ..runtime import FheModelClient, FheModelServer

    dataset = demo_dataset(args)
    check_model_options(args, dataset)
    x_tr, x_te, y_tr, y_te = _load(args, dataset)
    shape = "x".join(map(str, x_tr.shape[1:]))
    _say(
        f"data set {dataset}: {len(x_tr)} training rows, {len(x_te)} test rows, "
        + (f"{shape} images" if x_tr.ndim > 2 else f"{x_tr.shape[1]} features")
        + f", {len(np.unique(y_tr))} classes"
    )
    est = _train(args, x_tr, y_tr)
    acc_clear = float(np.mean(est.predict(x_te) == y_te))
    # The compiled model takes flat rows (an image flattened, C order), as its client does.
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    model = _compile(args, est, x_tr, y_tr)
    circuit_dir = Path(args.circuits) / demo_folder_name(args)
    key_dir = Path(args.keys) / demo_folder_name(args)
    _say(
        f"saving the compiled model to {circuit_dir}/ and keys to {key_dir}/ "
        "(the demo replaces its own previous folders)"
    )
    model.save(circuit_dir, overwrite=True)
    client = FheModelClient(circuit_dir)
    with _Step("generating keys"):
        keys = key_measures(client.keygen(key_dir, overwrite=True))
    server = FheModelServer(circuit_dir)

    acc_int = integer_accuracy(model, x_te, y_te)
    with _Step("simulating the circuit on every test row, 10 times"):
        simulated = simulated_measures(model, x_te, y_te)
    acc_sim = simulated["acc_simulated"]
    rows = min(args.rows, len(x_te))
    trip = _encrypted_predict(client, server, x_te[:rows], args.quiet)
    enc = round_trip_measures(model, trip, x_te[:rows], y_te[:rows])
    single = single_row_latency(client, server, x_te[:1], repeats=1)
    summary = summary_measures(model)
    _say("")
    _say(
        f"accuracy: clear (torch) {acc_clear:.4f} | integer program {acc_int:.4f} | "
        f"simulated {acc_sim:.4f} | encrypted {enc['acc_encrypted']:.4f} on {rows} rows "
        f"(agrees with simulation on {enc['encrypted_equals_simulated'] * 100:.0f} % of them)"
    )
    _say(
        f"stability: {simulated['simulate_unstable_rows']} of {len(x_te)} test rows changed "
        "label between 10 simulations of the circuit"
        + (" (bit-exact profile)" if summary["bit_exact"] else "")
    )
    _say(
        f"latency: {single['latency_single_s']:.3f} s for one row alone; "
        f"{enc['latency_batch_s_per_row']:.3f} s per row in batches of {server.workers}"
    )
    _say(
        f"PBS per row: {summary['pbs']} for {summary['hidden_neurons']} hidden neurons "
        f"({summary['removed_neurons']} dead neurons removed at compile time)"
    )
    bits = ", ".join(
        f"{r['layer']}: acc {r['proven_bits']}b proven / {r['measured_bits']}b measured"
        + (f", lookup {r['lookup_bits']}b" if r["lookup_bits"] else ", no lookup (client side)")
        for r in summary["layers"]
    )
    _say(f"bit-widths: {bits}")
    _say(
        f"keys: generated in {keys['keygen_s']:.1f} s, evaluation keys "
        f"{keys['eval_keys_mb']:.1f} MB; ciphertext {single['ciphertext_in_bytes_per_row']} B "
        "per input row"
    )
    return EXIT_OK


def _train(args: argparse.Namespace, x_tr: np.ndarray, y_tr: np.ndarray) -> Any:
    """The classifier the options describe, trained; says how sparse it came out."""
    est = _estimator(args, "classifier")
    with _Step("training (quantization-aware, with pruning)"):
        est.fit(x_tr, y_tr)
    module = est.module_
    if args.model == "conv":
        n_layers = len(module.masked_layers())
        limits = ", ".join(str(module.max_active_weights(i)) for i in range(n_layers))
        # Pruning is permanent after fit: a removed filter or neuron is an all-zero row.
        live = [
            int((layer.weight != 0).flatten(1).any(dim=1).sum())
            for layer in module.masked_layers()[:-1]
        ]
        _say(
            f"  at most {limits} active weights per filter or neuron, layer by layer "
            f"(accumulators <= {args.n_accum_bits} bits); live filters and neurons {live} "
            f"of {[*module.channels, *module.hidden]}"
        )
        return est
    _say(
        f"  at most {module.max_active_neurons()} active weights per neuron "
        f"(accumulators <= {args.n_accum_bits} bits), hidden widths {module.hidden_widths()}"
    )
    return est


def _compile(args: argparse.Namespace, est: Any, x_tr: np.ndarray, y_tr: np.ndarray) -> Any:
    """``est`` exported and compiled with the options' settings; prints its bit-width report."""
    from ..compiler.api import compile_onnx

    options = _compile_options(args, n_accum_bits=args.n_accum_bits)
    with _Step("exporting to ONNX and compiling with the bit-width check"):
        model = _compile_speaking(
            lambda: compile_onnx(
                est.export_onnx(),
                x_tr,
                options=options,
                output_spec=est.output_spec_,
                standardizer=est.standardizer_,
                calibration_labels=y_tr,
            )
        )
    _say(model.report.to_text())
    from ..compiler.report import stability_text

    note = stability_text(model.stats.stability)
    if note:
        _say(note)
    return model
