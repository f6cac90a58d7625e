"""``demo``: the whole flow on a shipped data set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .client import _encrypted_predict
from .common import EXIT_OK, _say, _Step
from .compile import _compile_speaking
from .options import _compile_options
from .train import _estimator


def cmd_demo(args: argparse.Namespace) -> int:
    from ..contract import range_warnings_off

    # A shipped data set's own split: its rare far values (a digits pixel) are the data's.
    with range_warnings_off():
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    from ..compiler.api import compile_onnx
    from ..datasets import load_split
    from ..runtime import FheModelClient, FheModelServer

    x_tr, x_te, y_tr, y_te = load_split(args.dataset)
    _say(
        f"data set {args.dataset}: {len(x_tr)} training rows, {len(x_te)} test rows, "
        f"{x_tr.shape[1]} features, {len(np.unique(y_tr))} classes"
    )
    est = _estimator(args, "classifier")
    with _Step("training (quantization-aware, with pruning)"):
        est.fit(x_tr, y_tr)
    module = est.module_
    _say(
        f"  at most {module.max_active_neurons()} active weights per neuron "
        f"(accumulators <= {args.n_accum_bits} bits), hidden widths {module.hidden_widths()}"
    )
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
    circuit_dir = Path(args.circuits) / f"demo_{args.dataset}"
    key_dir = Path(args.keys) / f"demo_{args.dataset}"
    _say(
        f"saving the compiled model to {circuit_dir}/ and keys to {key_dir}/ "
        "(the demo replaces its own previous folders)"
    )
    model.save(circuit_dir, overwrite=True)
    client = FheModelClient(circuit_dir)
    with _Step("generating keys"):
        info = client.keygen(key_dir, overwrite=True)
    server = FheModelServer(circuit_dir)

    acc_clear = float(np.mean(est.predict(x_te) == y_te))
    acc_int = float(np.mean(model.predict(x_te, fhe="disable") == y_te))
    with _Step("simulating the circuit on every test row"):
        acc_sim = float(np.mean(model.predict(x_te, fhe="simulate") == y_te))
    rows = min(args.rows, len(x_te))
    trip = _encrypted_predict(client, server, x_te[:rows], args.quiet)
    pred_enc = trip.predictions
    acc_enc = float(np.mean(pred_enc == y_te[:rows]))
    sim_rows = model.predict(x_te[:rows], fhe="simulate")
    single = client.encrypt(x_te[:1])
    t0 = time.perf_counter()
    server.run(single)
    single_s = time.perf_counter() - t0
    summary = model.summary()
    _say("")
    _say(
        f"accuracy: clear (torch) {acc_clear:.4f} | integer program {acc_int:.4f} | "
        f"simulated {acc_sim:.4f} | encrypted {acc_enc:.4f} on {rows} rows "
        f"(agrees with simulation on {np.mean(pred_enc == sim_rows) * 100:.0f} % of them)"
    )
    _say(
        f"latency: {single_s:.3f} s for one row alone; {trip.seconds_per_row:.3f} s per row in "
        f"batches of {server.workers}"
    )
    _say(
        f"PBS per row: {model.pbs_count} for {model.program.hidden_neurons()} hidden neurons "
        f"({summary['removed_neurons']} dead neurons removed at compile time)"
    )
    bits = ", ".join(
        f"{r['layer']}: acc {r['proven_bits']}b proven / {r['measured_bits']}b measured"
        + (f", lookup {r['lookup_bits']}b" if r["lookup_bits"] else ", no lookup (client side)")
        for r in summary["layers"]
    )
    _say(f"bit-widths: {bits}")
    _say(
        f"keys: generated in {info.keygen_seconds:.1f} s, evaluation keys "
        f"{info.evaluation_keys_bytes / 1e6:.1f} MB; ciphertext {len(single)} B per input row"
    )
    return EXIT_OK
