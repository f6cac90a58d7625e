"""The latency floor of sequential lookup levels: what no network of that depth can beat here.

A network with L hidden layers runs L lookup levels one after the other: each level's lookups
need the previous level's results. This measures encrypted circuits of 1 and 2 levels with 1
and 4 independent lookups per level (the second level reads the first level's result plus the
input, so Concrete cannot fuse the two lookups into one), at 2-4 bits of lookup input and a
given error probability per lookup. Keys are generated once per circuit; the run time is the
median of 5 calls after one warm-up, encryption and decryption excluded.

    python benchmarks/levels.py --p-error 1e-3

Run it on a quiet machine: it prints one line per circuit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fheqnn.compiler.backend import make_configuration
from fheqnn.concrete_seam import fhe as concrete_fhe


def level_circuit(fhe, levels: int, bits: int):
    """``levels`` lookups in sequence on every input value, each of ``bits``-bit inputs."""
    top = 1 << bits

    def circuit(x):
        start = x
        for level in range(levels):
            if level:
                x = x + start  # depends on the previous lookup and the input: no fusion
            x = fhe.univariate(lambda v: (v * 3 + 1) % (top // 2))(x)
        return x

    return circuit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p-error", type=float, default=1e-3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    fhe = concrete_fhe()
    rng = np.random.default_rng(0)
    configuration = make_configuration(p_error=args.p_error)
    for bits in (2, 3, 4):
        half = 1 << (bits - 1)
        for levels in (1, 2):
            for width in (1, 4):
                compiler = fhe.Compiler(level_circuit(fhe, levels, bits), {"x": "encrypted"})
                inputset = [rng.integers(0, half, size=(1, width)) for _ in range(20)]
                compiled = compiler.compile(inputset, configuration)
                compiled.keygen()
                args_enc = compiled.encrypt(rng.integers(0, half, size=(1, width)))
                compiled.run(args_enc)  # warm-up
                times = []
                for _ in range(max(1, args.runs)):
                    start = time.perf_counter()
                    compiled.run(args_enc)
                    times.append(time.perf_counter() - start)
                print(
                    f"bits {bits} levels {levels} lookups/level {width} "
                    f"(PBS {compiled.programmable_bootstrap_count}): run median "
                    f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
