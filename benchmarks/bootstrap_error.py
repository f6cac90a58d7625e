"""How far Concrete's bootstrap errors move a lookup, by error probability per lookup.

This compiles one identity lookup on ``--bits``-bit encrypted integers per ``p_error``,
simulates it on random inputs and prints how often the output was off, by how many steps. The
compiler's noise model (``fheqnn.compiler.rounding.bootstrap_error_steps``) draws an error with the
error probability and its size from the normal noise that errs that often; this checks it,
chiefly at the large error probabilities (0.1-0.5) that ``p_error`` accepts:

    python benchmarks/bootstrap_error.py --bits 7 --p-error 0.01,0.1,0.2,0.3,0.4,0.5

Offsets near +-2**bits are errors that wrapped around the table (inputs at either end of it).
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from fheqnn import keep_exit_status
from fheqnn.compiler.backend import make_configuration
from fheqnn.concrete_seam import fhe as concrete_fhe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=7)
    parser.add_argument("--p-error", default="0.01,0.1,0.3,0.5")
    parser.add_argument("--calls", type=int, default=40, help="simulated calls of 256 lookups")
    args = parser.parse_args(argv)
    keep_exit_status()
    fhe = concrete_fhe()
    width, top = 256, (1 << args.bits) - 1

    def circuit(x):
        return fhe.univariate(lambda v: v)(x)

    rng = np.random.default_rng(0)
    inputset = [rng.integers(0, top + 1, size=width) for _ in range(20)]
    inputset += [np.zeros(width, dtype=np.int64), np.full(width, top)]
    for p_error in (float(v) for v in args.p_error.split(",")):
        compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(
            inputset, make_configuration(p_error=p_error)
        )
        offsets: Counter[int] = Counter()
        for _ in range(args.calls):
            x = rng.integers(0, top + 1, size=width)
            offsets.update((np.asarray(compiled.simulate(x)) - x).tolist())
        total = sum(offsets.values())
        erred = 1 - offsets[0] / total
        two = sum(n for k, n in offsets.items() if 2 <= abs(k) < top // 2) / total
        wrapped = sum(n for k, n in offsets.items() if abs(k) >= top // 2) / total
        print(
            f"{args.bits} bits, p_error {p_error:g}: {erred:.4f} of {total} lookups off; "
            f"two steps or more {two:.4f}; wrapped around {wrapped:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
