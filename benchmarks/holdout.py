"""Cross-validation on the training part only: how to decide a default without the test split.

For a data set, the 75 % training part of the benchmark split (``fheqnn.datasets.load_split``)
is cut into K folds (stratified for classifiers, shuffled with random_state 7); for each
configuration and fold, an estimator (seed = fold index) is fitted on the other folds and scored
on the held-out fold: in the clear (torch), and through the lowered integer program as
``compile`` would build it (rounding chosen by the accuracy guard on the training folds, under
the noise model of the error probability it was judged for, ``fheqnn.compiler.noise``; mean of
10 seeded draws of that noise, which also count the held-out rows whose prediction changes
between draws, ``unstable``; no Concrete compilation). With ``--compile-configs`` each fitted
fold is lowered once per set of compile options (plus a key of this script's own,
``"calibration_noise"``, which calibrates on the training folds plus noisy copies of them,
noise in units of each feature's standard deviation). Also reported: table lookups per row and
the compiler's estimated seconds per encrypted row.

    python benchmarks/holdout.py --dataset breast_cancer --folds 5 \\
        --configs '{}' '{"weight_decay": 0.3}'
    python benchmarks/holdout.py --dataset digits --folds 3 \\
        --compile-configs '{}' '{"align_rounding": false}' --simulate-p-error 1e-3
    python benchmarks/holdout.py --dataset digits --folds 3 \\
        --compile-configs '{}' '{"exact": true}' '{"max_unstable": null}'
    python benchmarks/holdout.py --dataset wine --folds 5 --baselines   # + scikit-learn's

Prints one JSON line per fold and a summary line per configuration (mean and worst).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from fheqnn import NeuralNetClassifier, NeuralNetRegressor
from fheqnn.compiler import passes
from fheqnn.compiler.api import compile_program
from fheqnn.compiler.backend import make_configuration
from fheqnn.compiler.guard import calibration_score
from fheqnn.compiler.lowering import lower_onnx
from fheqnn.compiler.noise import STABILITY_DRAWS, NoiseSpec
from fheqnn.compiler.options import CompileOptions
from fheqnn.datasets import ALL_DATASETS, REGRESSION, load_split

#: Draws of the circuit's noise averaged into each fold's compiled score (and over which a row
#: whose prediction changes counts as unstable): as many as the compiler's guard makes.
DRAWS = STABILITY_DRAWS


def _score(y_true: np.ndarray, pred: np.ndarray, regression: bool) -> float:
    """Accuracy, or R2 for regression (the compiler's own measure)."""
    return calibration_score(pred, y_true, classifier=not regression)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=[*ALL_DATASETS, "friedman1"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--configs", nargs="+", default=["{}"], help="estimator parameters, one JSON object each"
    )
    parser.add_argument(
        "--compile-configs",
        nargs="+",
        default=["{}"],
        help="compile options, one JSON object each; every fitted fold is compiled with each",
    )
    parser.add_argument(
        "--simulate-p-error",
        type=float,
        default=None,
        metavar="P",
        help="also compile each lowered program with Concrete at this error probability per "
        "lookup and score its simulation (bootstrap errors and Concrete's own approximate "
        "rounding included; mean of 2 passes)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also score accuracy.py's scikit-learn baselines on the same folds (seed = fold)",
    )
    parser.add_argument(
        "--align-spread",
        type=float,
        default=None,
        metavar="S",
        help="spread of approximate rounding that grid alignment assumes, in steps (default: "
        "passes.ALIGN_ROUNDING_SPREAD)",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.align_spread is not None:
        passes.ALIGN_ROUNDING_SPREAD = args.align_spread
    regression = args.dataset in REGRESSION or args.dataset == "friedman1"
    if args.dataset == "friedman1":
        # scikit-learn's generated regression problem (regression_rounding.py, beside this file)
        from regression_rounding import training_part

        x_tr, y_tr = training_part(args.dataset)
    else:
        x_tr, _, y_tr, _ = load_split(args.dataset, standardize=True)
    estimator = NeuralNetRegressor if regression else NeuralNetClassifier
    splitter = (KFold if regression else StratifiedKFold)(args.folds, shuffle=True, random_state=7)
    compile_configs = [json.loads(text) for text in args.compile_configs]
    if args.baselines:
        from accuracy import baselines

        scores: dict[str, list[float]] = {}
        for fold, (fit_rows, held_rows) in enumerate(splitter.split(x_tr, y_tr)):
            parts = (x_tr[fit_rows], y_tr[fit_rows], x_tr[held_rows], y_tr[held_rows])
            for key, value in baselines(regression, fold, *parts).items():
                scores.setdefault(key, []).append(value)
                print(json.dumps({"dataset": args.dataset, "baseline": key, "fold": fold,
                                  "score": round(value, 4)}), flush=True)  # fmt: skip
        for key, values in scores.items():
            print(f"SUMMARY {args.dataset} {key}: mean {np.mean(values):.4f} worst "
                  f"{np.min(values):.4f}", flush=True)  # fmt: skip
    for text in args.configs:
        fit_config = json.loads(text)
        results: dict[str, list[dict]] = {}
        for fold, (fit_rows, held_rows) in enumerate(splitter.split(x_tr, y_tr)):
            model = estimator(random_state=fold, verbose=0, **fit_config)
            model.fit(x_tr[fit_rows], y_tr[fit_rows])
            clear = float(model.score(x_tr[held_rows], y_tr[held_rows]))
            for compile_config in compile_configs:
                config = {**fit_config, **({"compile": compile_config} if compile_config else {})}
                rows = results.setdefault(json.dumps(config), [])
                options = dict(compile_config)
                # Experimental: calibrate (and guard) on the rows plus noisy copies of them,
                # noise in units of each feature's standard deviation.
                noise = options.pop("calibration_noise", None)
                calibration = x_tr[fit_rows]
                if noise:
                    rng = np.random.default_rng(1000 + fold)
                    spread_x = calibration.std(axis=0)
                    calibration = np.concatenate(
                        [
                            calibration,
                            calibration + noise * spread_x * rng.normal(size=calibration.shape),
                        ]
                    )
                lowered = lower_onnx(
                    model.export_onnx(),
                    calibration,
                    CompileOptions(n_accum_bits=model.module_.n_accum_bits, **options),
                    output_spec=model.output_spec_,
                    standardizer=model.standardizer_,
                )
                program, contract = lowered.program, lowered.contract
                q = contract.quantize(x_tr[held_rows])
                noise = NoiseSpec.at(lowered.noise_p_error)
                rng = np.random.default_rng(0)
                predictions = [
                    contract.postprocess(
                        program.dequantize_output(program.run_integer(q, noise.draw(rng)))
                    )
                    for _ in range(DRAWS)
                ]
                compiled = np.mean([_score(y_tr[held_rows], p, regression) for p in predictions])
                unstable = (
                    None
                    if regression
                    else int(np.sum(np.any(np.array(predictions) != predictions[0], axis=0)))
                )
                if args.simulate_p_error is not None:
                    circuit = compile_program(
                        lowered, make_configuration(p_error=args.simulate_p_error)
                    )
                    simulated = np.mean(
                        [
                            _score(
                                y_tr[held_rows],
                                np.ravel(circuit.predict(x_tr[held_rows], fhe="simulate")),
                                regression,
                            )
                            for _ in range(2)
                        ]
                    )
                row = {
                    "dataset": args.dataset,
                    "config": config,
                    "fold": fold,
                    "clear": round(clear, 4),
                    "compiled": round(float(compiled), 4),
                    "lookups": program.hidden_neurons(),
                    "lookup_bits": [
                        layer.lookup_bits() for layer in program.layers if layer.is_hidden
                    ],
                    "estimated_s_per_row": round(lowered.rounding.estimated_cost_s, 3),
                    "p_error_judged": lowered.noise_p_error,
                    "unstable": unstable,
                    "held_rows": len(held_rows),
                }
                if args.simulate_p_error is not None:
                    row["simulated"] = round(float(simulated), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
        for key, rows in results.items():
            clear = np.array([r["clear"] for r in rows])
            compiled = np.array([r["compiled"] for r in rows])
            simulated = np.array([r.get("simulated", np.nan) for r in rows])
            print(
                f"SUMMARY {args.dataset} {key}: clear mean {clear.mean():.4f} worst "
                f"{clear.min():.4f} | compiled mean {compiled.mean():.4f} worst "
                f"{compiled.min():.4f} | simulated mean {simulated.mean():.4f} worst "
                f"{simulated.min():.4f} | lookups {np.mean([r['lookups'] for r in rows]):.1f}"
                f" | estimated s/row {np.mean([r['estimated_s_per_row'] for r in rows]):.3f}"
                + (
                    ""
                    if rows[0]["unstable"] is None
                    else f" | unstable held-out rows {sum(r['unstable'] for r in rows)} of "
                    f"{sum(r['held_rows'] for r in rows)}"
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
