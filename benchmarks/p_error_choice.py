"""How ``p_error="auto"`` chooses, and what the error probability costs in held-out accuracy.

For one data set: the estimator is trained with its defaults on the 75 % training part of the
benchmark split (``fheqnn.datasets.load_split``), one model per seed. Then, per model:

1. ``compile(x_train, y_train)`` (as ``fheqnn bench`` does) ``--repeats`` times per grid setting
   (``align_rounding`` True / False): which ``p_error`` the search kept, the lookup precision,
   whether grids moved, and each candidate's timing and estimated key size. Timings are
   measured: run it on a quiet machine.
2. The program lowered with each grid setting compiled at every error probability tried by the
   search (and Concrete's default), its test rows simulated ``--passes`` times: held-out
   accuracy (R2 for regression) by error probability, next to the clear model and to the same
   program with exact rounding and no noise (our interpreter).

Prints one JSON line per compile / per program.

    python benchmarks/p_error_choice.py --dataset breast_cancer --seeds 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from fheqnn import NeuralNetClassifier, NeuralNetRegressor
from fheqnn.compiler.api import compile_program
from fheqnn.compiler.backend import make_configuration
from fheqnn.compiler.guard import calibration_score
from fheqnn.compiler.options import P_ERROR_CANDIDATES
from fheqnn.datasets import ALL_DATASETS, REGRESSION, load_split


def _score(y_true: np.ndarray, pred: np.ndarray, regression: bool) -> float:
    """Accuracy, or R2 for regression (the compiler's own measure)."""
    return calibration_score(pred, y_true, classifier=not regression)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=ALL_DATASETS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="compiles per model and setting")
    parser.add_argument("--passes", type=int, default=5, help="simulations of the test rows")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    regression = args.dataset in REGRESSION
    x_tr, x_te, y_tr, y_te = load_split(args.dataset, standardize=True)
    estimator = NeuralNetRegressor if regression else NeuralNetClassifier
    for seed in range(args.seeds):
        model = estimator(random_state=seed, verbose=0).fit(x_tr, y_tr)
        clear = float(model.score(x_te, y_te))
        for align in (True, False):
            for repeat in range(args.repeats):
                start = time.perf_counter()
                model.compile(x_tr, y_tr, align_rounding=align)
                compiled = model.fhe_model_
                summary = compiled.summary()
                lowered = compiled._lowered
                row = {
                    "dataset": args.dataset,
                    "seed": seed,
                    "align_rounding": align,
                    "repeat": repeat,
                    "p_error": summary["p_error"],
                    "lookup_bits": [
                        layer.lookup_bits() for layer in lowered.program.layers if layer.is_hidden
                    ],
                    "grids_moved": lowered.rounding.grid_offsets is not None,
                    "candidates": [
                        {
                            "p_error": entry["p_error"],
                            "boundary": entry.get("simulated_boundary_agreement"),
                            "seconds": entry.get("seconds_per_call"),
                            "key_mb": round(entry["evaluation_keys_bytes_estimate"] / 1e6),
                        }
                        for entry in summary["p_error_curve"]
                    ],
                    "compile_s": round(time.perf_counter() - start, 1),
                }
                print(json.dumps(row), flush=True)
            q = lowered.contract.quantize(x_te)
            exact = lowered.contract.postprocess(
                lowered.program.dequantize_output(lowered.program.run_integer(q))
            )
            row = {
                "dataset": args.dataset,
                "seed": seed,
                "align_rounding": align,
                "grids_moved": lowered.rounding.grid_offsets is not None,
                "clear": round(clear, 4),
                "exact_rounding": round(_score(y_te, exact, regression), 4),
            }
            for p_error in (*P_ERROR_CANDIDATES, None):
                circuit = compile_program(
                    lowered, make_configuration(**({} if p_error is None else {"p_error": p_error}))
                )
                row[f"p_error {p_error or 'default'}"] = round(
                    float(
                        np.mean(
                            [
                                _score(y_te, circuit.predict(x_te, fhe="simulate"), regression)
                                for _ in range(args.passes)
                            ]
                        )
                    ),
                    4,
                )
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
