"""Concrete ML 1.9's built-in network on our benchmark split: the reference row of the comparison.

Runs in its own virtual environment (Concrete ML pins torch 2.3 and concrete-python 2.10, so it
cannot share ours). Created once, by hand, never in CI (a large install)::

    python -m venv /work/refenv && /work/refenv/bin/pip install "concrete-ml==1.9.*"
    /work/refenv/bin/python benchmarks/reference.py --dataset breast_cancer --seed 0

Prints one JSON line with the same keys as ``fheqnn bench`` rows (accuracy clear / simulated,
the mean of 10 simulations / encrypted, the test rows whose label changed between the 10
simulations, PBS, compile s, keygen s, evaluation key MB, single-row latency s = median of 5
encrypted rows, each encrypt -> run -> decrypt). ``fheqnn bench --compare-reference`` runs it
and puts both rows side by side. Same split as ``fheqnn.datasets.load_split`` (75/25
stratified, random_state 0, standardized on the training part), re-implemented here because
fheqnn is not importable there.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from reference_measures import measure_circuit

LOADERS = {
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
}


def load_split(name: str) -> tuple[np.ndarray, ...]:
    """The benchmark split (see ``fheqnn.datasets.load_split``)."""
    x, y = LOADERS[name](return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    return scaler.transform(x_tr), scaler.transform(x_te), y_tr, y_te


def main() -> None:
    """Train, compile and measure the reference network; print its JSON row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="breast_cancer", choices=sorted(LOADERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--prune", type=float, default=0.0)
    parser.add_argument("--width", type=int, default=4, help="n_hidden_neurons_multiplier")
    parser.add_argument("--rows", type=int, default=5, help="encrypted rows timed (median)")
    args = parser.parse_args()

    import torch
    from concrete.ml.sklearn import NeuralNetClassifier

    torch.manual_seed(args.seed)
    x_tr, x_te, y_tr, y_te = load_split(args.dataset)
    x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    row: dict = {"system": "concrete-ml 1.9 NeuralNetClassifier", "dataset": args.dataset}
    row.update(seed=args.seed, epochs=args.epochs, prune=args.prune, width=args.width)
    row["load"] = os.getloadavg()[0]
    # The seed's defaults, which the reference shares: 3 layers, width x4, 3/3/8 bits.
    model = NeuralNetClassifier(
        module__n_layers=3,
        module__n_hidden_neurons_multiplier=args.width,
        module__n_w_bits=3,
        module__n_a_bits=3,
        module__n_accum_bits=8,
        module__n_prune_neurons_percentage=args.prune,
        max_epochs=args.epochs,
        verbose=0,
    )
    model.fit(x_tr, y_tr)
    row["acc_clear"] = float(np.mean(model.predict(x_te) == y_te))
    start = time.perf_counter()
    circuit = model.compile(x_tr)
    row["compile_s"] = time.perf_counter() - start
    row["pbs"] = int(circuit.programmable_bootstrap_count)
    measure_circuit(row, circuit, lambda x, fhe: model.predict(x, fhe=fhe), x_te, y_te, args.rows)
    row["load_after"] = os.getloadavg()[0]
    print(json.dumps(row))


if __name__ == "__main__":
    main()
