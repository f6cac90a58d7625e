"""Test accuracy of NeuralNetClassifier against a float MLP of the same shape.

For each data set shipped with scikit-learn (breast cancer, digits, iris): 75/25 stratified split
(random_state=0), features standardized on the training part, several seeds. Writes one JSON line
per (data set, configuration, seed) and prints a markdown summary (mean and worst seed).

    python benchmarks/accuracy.py                      # defaults and 4/4/12, 3 seeds
    python benchmarks/accuracy.py --seeds 5 --out benchmarks/results/accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fheqnn import NeuralNetClassifier
from fheqnn.bench import float_mlp_accuracy
from fheqnn.datasets import DATASETS, load_split

CONFIGS = {
    "defaults (3/3/8)": {},
    "4/4/12": {"module__n_w_bits": 4, "module__n_a_bits": 4, "module__n_accum_bits": 12},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    args = parser.parse_args(argv)

    rows = []
    for name in args.datasets:
        x_tr, x_te, y_tr, y_te = load_split(name)
        for config_name in args.configs:
            for seed in range(args.seeds):
                start = time.perf_counter()
                clf = NeuralNetClassifier(random_state=seed, verbose=0, **CONFIGS[config_name])
                clf.fit(x_tr, y_tr)
                fit_s = time.perf_counter() - start
                row = {
                    "dataset": name,
                    "config": config_name,
                    "seed": seed,
                    "accuracy": float(clf.score(x_te, y_te)),
                    "float_accuracy": float_mlp_accuracy(clf, x_tr, y_tr, x_te, y_te, seed),
                    "max_active_neurons": clf.module_.max_active_neurons(),
                    "hidden_widths": clf.module_.hidden_widths(),
                    "fit_s": round(fit_s, 2),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")

    print(
        "| data set | config | quantized mean | quantized worst | float mean | float worst "
        "| gap (mean) | gap (worst) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        for config_name in args.configs:
            sel = [r for r in rows if r["dataset"] == name and r["config"] == config_name]
            q = np.array([r["accuracy"] for r in sel]) * 100
            f = np.array([r["float_accuracy"] for r in sel]) * 100
            print(
                f"| {name} | {config_name} | {q.mean():.1f} | {q.min():.1f} | {f.mean():.1f} "
                f"| {f.min():.1f} | {f.mean() - q.mean():+.1f} | {f.min() - q.min():+.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
