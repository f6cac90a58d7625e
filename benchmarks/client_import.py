"""Start-up cost of a deployed encryption client, against Concrete's own import.

A client process that only imports ``fheqnn.runtime``, loads a compiled model's client part and
its keys and encrypts one row, timed from interpreter start, next to a process that only runs
``from concrete import fhe`` (which the client cannot avoid). Both are fresh interpreters,
alternated, medians of ``--repeats`` runs.

    python benchmarks/client_import.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from fheqnn import FheModelClient, NeuralNetClassifier
    from fheqnn.datasets import load_split

    x_tr, x_te, y_tr, _ = load_split("breast_cancer")
    clf = NeuralNetClassifier(verbose=0, random_state=0).fit(x_tr, y_tr)  # the demo's model
    clf.compile(x_tr)
    with tempfile.TemporaryDirectory() as tmp:
        model, keys, rows = Path(tmp) / "model", Path(tmp) / "keys", Path(tmp) / "rows.npy"
        clf.fhe_model_.save(model)
        FheModelClient(model).keygen(keys)
        np.save(rows, x_te[:1])
        concrete = "from concrete import fhe"
        client = (
            "import numpy as np\n"
            "from fheqnn.runtime import FheModelClient\n"
            f"c = FheModelClient({str(model)!r}, {str(keys)!r})\n"
            f"c.encrypt(np.load({str(rows)!r}))\n"
        )
        _timed(concrete)  # warm the file cache
        base, flow = [], []
        for _ in range(args.repeats):
            base.append(_timed(concrete))
            flow.append(_timed(client))
    b, f = statistics.median(base), statistics.median(flow)
    print(f"from concrete import fhe: {b:.2f} s (median of {args.repeats})")
    print(f"client import + load keys + encrypt 1 row: {f:.2f} s")
    print(f"ratio: {f / b:.2f} x (target <= 1.3 x)")


if __name__ == "__main__":
    main()
