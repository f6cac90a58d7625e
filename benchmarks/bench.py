"""Accuracy and encrypted latency across pruning percentages: ``fheqnn bench`` as a script.

    python benchmarks/bench.py --profile quick     # simulation only, a few minutes (CI runs it)
    python benchmarks/bench.py --profile full      # real encryption, by hand on a quiet machine

Rows are appended to benchmarks/results/<name>.jsonl; the table (.md) and plot (.png) are
rebuilt from them. Same options as ``fheqnn bench --help``.
"""

from __future__ import annotations

import sys

from fheqnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
