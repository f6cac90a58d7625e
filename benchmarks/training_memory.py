"""Training memory: the estimate that refuses networks too wide for the machine
(``fheqnn.model.memory``) against the peak resident memory measured.

Each size trains ``NeuralNetClassifier(max_epochs=1)`` on random rows in a fresh interpreter
and reports the growth of its peak resident memory (``ru_maxrss``) over the memory after
imports, beside the estimate:

    python benchmarks/training_memory.py --features 400,800,1200,1600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys
import numpy as np
import torch
torch.set_num_threads(1)
from fheqnn import NeuralNetClassifier
d, rows = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x, y = rng.normal(size=(rows, d)), rng.integers(0, 2, rows)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
base = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
NeuralNetClassifier(max_epochs=1, verbose=0).fit(x, y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"features": d, "rows": rows, "grown": peak - base}))
"""


def main(argv: list[str] | None = None) -> int:
    from fheqnn.model.memory import estimate_training_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="400,800,1200")
    parser.add_argument("--rows", type=int, default=600)
    args = parser.parse_args(argv)
    for d in (int(v) for v in args.features.split(",")):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(d), str(args.rows)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        estimate = estimate_training_memory(d, 3, 2, 4, n_rows=args.rows)
        print(
            f"{d} features, {estimate.parameters:,} weights: measured {measured['grown'] / 1e6:.0f}"
            f" MB, estimated {estimate.total_bytes / 1e6:.0f} MB "
            f"({estimate.total_bytes / measured['grown'] - 1:+.0%})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
