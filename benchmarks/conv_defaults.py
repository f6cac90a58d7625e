"""How ``ConvNetClassifier``'s defaults were chosen: clear accuracy on a split of digits'
training part only (75/25, stratified by the seed; the benchmark's test split is never used).

    python benchmarks/conv_defaults.py --seeds 0 1 2                      # the defaults
    python benchmarks/conv_defaults.py --channels 32,64 --set input_noise=0.3

Prints one JSON line per seed (parameters, training seconds, validation accuracy) and the mean.
Single-threaded torch, so that two runs can share a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from conv_compare import add_network_arguments, network_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_network_arguments(parser)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="any estimator parameter, e.g. --set weight_decay=0.01",
    )
    args = parser.parse_args()

    import torch
    from sklearn.model_selection import train_test_split

    from fheqnn import ConvNetClassifier
    from fheqnn.datasets import load_split

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    params = network_overrides(args)
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = json.loads(value)
    x_tr, _, y_tr, _ = load_split("digits", standardize=False)
    images = x_tr.reshape(-1, 1, 8, 8)
    scores = []
    for seed in args.seeds:
        fit_x, val_x, fit_y, val_y = train_test_split(
            images, y_tr, test_size=0.25, stratify=y_tr, random_state=seed
        )
        est = ConvNetClassifier(random_state=seed, verbose=0, **params)
        start = time.perf_counter()
        est.fit(fit_x, fit_y)
        score = float(est.score(val_x, val_y))
        scores.append(score)
        row = {"seed": seed, "params": repr(params), "fit_s": time.perf_counter() - start}
        print(json.dumps({**row, "validation_accuracy": score}), flush=True)
    print(json.dumps({"params": repr(params), "mean": float(np.mean(scores))}))


if __name__ == "__main__":
    main()
