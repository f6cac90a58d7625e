"""What a narrower proven accumulator buys and costs (issue 24's speed lead; by hand, not in CI).

Concrete ML's network runs its lookups on 5-6-bit encodings because its accumulators are as
wide as its calibration rows make them (e.g. 6 bits on breast cancer at width x1), while ours
are as wide as the proof allows (8 bits at the seed's 3/3/8): every ciphertext of a layer's
linear part is encoded at that width, so rounding and lookups run on larger parameters. One
sound way down is to train for a smaller ``n_accum_bits`` (still within the user's budget).
This script trains, compiles (default or bit-exact profile) and runs one configuration per
line: PBS, Concrete's parameters per PBS, complexity, accuracy on the test split (clear and
simulated), keygen, evaluation keys and single-row latency (median of 3 after a warm-up).

    PYTHONPATH=src python benchmarks/accum_width.py --dataset breast_cancer --width 4 \\
        --accum-bits 8 7 6 [--weight-quant a2q+] [--exact]

A probe: the test split is looked at, so nothing may be chosen from it (see
``benchmarks/holdout.py`` for choices).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from fheqnn import NeuralNetClassifier
from fheqnn.datasets import load_split


def measure(args: argparse.Namespace, accum_bits: int) -> dict:
    """Train, compile and time one configuration."""
    x_tr, x_te, y_tr, y_te = load_split(args.dataset)
    extra = {} if args.weight_quant == "topk" else {"weight_quant": args.weight_quant}
    clf = NeuralNetClassifier(
        module__n_layers=3,
        module__n_accum_bits=accum_bits,
        module__n_hidden_neurons_multiplier=args.width,
        module__n_prune_neurons_percentage=args.prune,
        random_state=args.seed,
        verbose=0,
        **extra,
    )
    clf.fit(x_tr, y_tr)
    start = time.perf_counter()
    clf.compile(x_tr, y_tr, exact=args.exact)
    row = {"dataset": args.dataset, "width": args.width, "prune": args.prune}
    row.update(accum_bits=accum_bits, weight_quant=args.weight_quant, exact=args.exact)
    row["compile_s"] = time.perf_counter() - start
    model = clf.fhe_model_
    stats = model.circuit.statistics
    row["pbs"] = model.pbs_count
    row["pbs_by_parameters"] = {
        f"N={k.polynomial_size()} k={k.glwe_dimension()} level={k.level()}": v
        for k, v in stats["programmable_bootstrap_count_per_parameter"].items()
    }
    row["complexity"] = stats.get("complexity")
    row["p_error"] = stats.get("p_error")
    row["acc_clear"] = float(np.mean(clf.predict(x_te) == y_te))
    row["acc_simulated"] = float(np.mean(clf.predict(x_te, fhe="simulate") == y_te))
    start = time.perf_counter()
    model.circuit.keygen()
    row["keygen_s"] = time.perf_counter() - start
    row["eval_keys_mb"] = (stats["size_of_bootstrap_keys"] + stats["size_of_keyswitch_keys"]) / 1e6
    times = []
    for i in range(4):  # the first run decompresses the keys: a warm-up
        start = time.perf_counter()
        clf.predict(x_te[i : i + 1], fhe="execute")
        times.append(time.perf_counter() - start)
    row["latency_s"] = float(np.median(times[1:]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="breast_cancer")
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--prune", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accum-bits", type=int, nargs="+", default=[8, 7, 6])
    parser.add_argument("--weight-quant", default="topk", choices=["topk", "a2q", "a2q+"])
    parser.add_argument("--exact", action="store_true", help="the bit-exact profile")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for bits in args.accum_bits:
        print(json.dumps(measure(args, bits)), flush=True)


if __name__ == "__main__":
    main()
