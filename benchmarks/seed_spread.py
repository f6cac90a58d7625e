"""How much the score moves from one training seed to the next, on the training part only.

The issue's targets take the worst of 3 seeds, so a configuration is judged by its spread
across seeds as well as its mean. For a data set, the 75 % training part of the benchmark split
(``fheqnn.datasets.load_split``) is split again 75/25 three times (random_state 100-102,
stratified for classifiers); on each split, every configuration is fitted with seeds 0-4 and
scored in the clear on the held-out quarter (accuracy, or R2 for regression).

    python benchmarks/seed_spread.py --dataset diabetes \\
        --configs '{"input_noise": 0, "validation_fraction": 0.15}' '{}'

Prints one line per split and configuration, then a summary per configuration: the mean over
the splits of each split's mean, worst seed and spread (best - worst).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
from sklearn.model_selection import train_test_split

from fheqnn import NeuralNetClassifier, NeuralNetRegressor
from fheqnn.datasets import ALL_DATASETS, REGRESSION, load_split

SPLITS = 3
SEEDS = 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=ALL_DATASETS)
    parser.add_argument(
        "--configs", nargs="+", default=["{}"], help="estimator parameters, one JSON object each"
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    x, _, y, _ = load_split(args.dataset)
    regression = args.dataset in REGRESSION
    estimator = NeuralNetRegressor if regression else NeuralNetClassifier
    configs = [json.loads(text) for text in args.configs]
    summary: dict[str, list[list[float]]] = {json.dumps(c): [] for c in configs}
    for split in range(SPLITS):
        x_fit, x_held, y_fit, y_held = train_test_split(
            x, y, test_size=0.25, random_state=100 + split, stratify=None if regression else y
        )
        for config in configs:
            scores = [
                float(
                    estimator(random_state=seed, verbose=0, **config)
                    .fit(x_fit, y_fit)
                    .score(x_held, y_held)
                )
                for seed in range(SEEDS)
            ]
            summary[json.dumps(config)].append(scores)
            print(
                json.dumps(
                    {"dataset": args.dataset, "config": config, "split": split, "scores": scores}
                ),
                flush=True,
            )
    for key, per_split in summary.items():
        scores = np.array(per_split)
        print(
            f"SUMMARY {args.dataset} {key}: mean {scores.mean(axis=1).mean():.4f} | worst seed "
            f"{scores.min(axis=1).mean():.4f} | spread "
            f"{np.ptp(scores, axis=1).min():.4f}-{np.ptp(scores, axis=1).max():.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
