"""How random Concrete's approximate rounding is near the middle of a step, by error probability.

A value a few sixteenths of a step below the middle of a rounding step should round down;
Concrete's approximate rounding (a modulus switch on the noisy ciphertext) sometimes rounds it
up. This compiles one approximate ``round_bit_pattern`` (4 of 8 bits) followed by a lookup, per
``p_error``, simulates each value many times and prints how often it flipped, with the spread
(standard deviation, as a fraction of a step) of the normal noise that would flip as often. The
compiler models this noise with ``fheqnn.compiler.rounding.APPROX_ROUNDING_SPREAD`` (accuracy guard)
and ``fheqnn.compiler.passes.ALIGN_ROUNDING_SPREAD`` (grid alignment); the accuracy and
stability guard takes the spread at the circuit's error probability from the table this writes
(``--write``), ``src/fheqnn/compiler/approx_spread.json``, read by ``fheqnn.compiler.noise``:

    python benchmarks/approx_spread.py --trials 1000 --write src/fheqnn/compiler/approx_spread.json
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
    parser.add_argument("--write", help="JSON file to write the fitted spreads to")
    args = parser.parse_args(argv)
    table = {}
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
    for p_error in (None, 2.0**-40, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
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
        table["default" if p_error is None else repr(p_error)] = {
            "spread": float(np.mean(spreads)) if spreads else None,
            "flipped": {f"{s}/16": f for s, f in flips.items()},
        }
    if args.write:
        import json
        import sys
        from importlib.metadata import version

        document = {
            "what": "spread of Concrete's approximate rounding (standard deviation of the normal "
            "noise that flips as often, as a fraction of a rounding step), by error "
            "probability per lookup; 'default' is Concrete's default (1e-5 for the circuit)",
            "command": "python benchmarks/approx_spread.py " + " ".join(sys.argv[1:]),
            "concrete_python": version("concrete-python"),
            "trials": args.trials,
            "spreads": table,
        }
        with open(args.write, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
