"""How random Concrete's approximate rounding is near the middle of a step, by error probability.

A value a few sixteenths of a step below the middle of a rounding step should round down;
Concrete's approximate rounding (a modulus switch on the noisy ciphertext) sometimes rounds it
up. This compiles one approximate ``round_bit_pattern`` (4 of 8 bits) followed by a lookup, per
``p_error``, simulates each value many times and prints how often it flipped, with the spread
(standard deviation, as a fraction of a step) of the normal noise that would flip as often. The
compiler models this noise with ``fheqnn.compiler.ir.APPROX_ROUNDING_SPREAD`` (accuracy guard)
and ``fheqnn.compiler.passes.ALIGN_ROUNDING_SPREAD`` (grid alignment).

    python benchmarks/approx_spread.py --trials 300
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from fheqnn.compiler.backend import make_configuration
from fheqnn.concrete_seam import fhe as concrete_fhe

LSBS = 4
STEP = 1 << LSBS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args(argv)
    fhe = concrete_fhe()

    def circuit(x):
        rounded = fhe.round_bit_pattern(
            x,
            lsbs_to_remove=LSBS,
            overflow_protection=False,
            exactness=fhe.Exactness.APPROXIMATE,
        )
        return fhe.univariate(lambda v: v // STEP)(rounded)

    inputset = [np.array([v]) for v in range(200)]
    middle = 5 * STEP + STEP // 2  # values below it round down, to cell 5
    for p_error in (None, 1e-4, 1e-3, 1e-2):
        configuration = make_configuration(**({} if p_error is None else {"p_error": p_error}))
        compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration)
        flips = {}
        for sixteenths in (1, 2, 3, 4):
            value = np.array([middle - sixteenths * STEP // 16])
            cells = [int(np.ravel(compiled.simulate(value))[0]) for _ in range(args.trials)]
            flips[sixteenths] = float(np.mean(np.array(cells) != 5))
        spreads = [(s / 16) / norm.isf(flips[s]) for s in (2, 3) if 0 < flips[s] < 0.5]
        print(
            f"p_error {p_error or 'default'}: flipped "
            + ", ".join(f"{s}/16 below the middle {f:.3f}" for s, f in flips.items())
            + f"; spread {' / '.join(f'{v:.3f}' for v in spreads)} of a step",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
