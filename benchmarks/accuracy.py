"""Test accuracy of the estimators, clear and compiled, against scikit-learn baselines.

For each data set shipped with scikit-learn (breast cancer, wine, digits, iris; diabetes for
regression): 75/25 split (random_state=0, stratified for classification), features standardized
on the training part (``--raw`` leaves them raw: the estimators standardize themselves), several
seeds. Our model is measured in the clear (torch) and compiled (Concrete simulation of the
circuit); the baselines (``LogisticRegression``, ``MLPClassifier((120, 120))`` resp. ``RidgeCV``,
``MLPRegressor((120, 120))``) are trained in the same run on the same split with the same seeds.
Writes one JSON line per (data set, configuration, seed) and prints a markdown table of the worst
seed (accuracy, or R2 for regression). The compiled accuracy of a seed is the mean of
``--passes`` simulations of the test rows (5 by default; before session 5, one).

    python benchmarks/accuracy.py                        # defaults, 3 seeds, every data set
    python benchmarks/accuracy.py --datasets iris --seeds 2 --out results/accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.neural_network import MLPClassifier, MLPRegressor

from fheqnn import NeuralNetClassifier, NeuralNetRegressor
from fheqnn.compiler.guard import calibration_score
from fheqnn.datasets import ALL_DATASETS, REGRESSION, load_split

CONFIGS = {
    "defaults (3/3/8)": {},
    "4/4/12": {"module__n_w_bits": 4, "module__n_a_bits": 4, "module__n_accum_bits": 12},
    # The seed's module defaults (3/3/8) with other training options:
    "3/3/8, 100 ep, select after freeze": {"max_epochs": 100, "select_after_freeze": True},
    "3/3/8, no validation split": {"validation_fraction": None},
    "3/3/8, a2q": {"weight_quant": "a2q"},
    "3/3/8, a2q+": {"weight_quant": "a2q+"},
}
DEFAULT_ORDER = ["breast_cancer", "wine", "digits", "iris", "diabetes"]


def baselines(regression: bool, seed: int, x_tr, y_tr, x_te, y_te) -> dict[str, float]:
    """The scikit-learn baselines' scores (accuracy, or R2), fitted on ``x_tr`` with ``seed``."""
    with warnings.catch_warnings():
        # sklearn's MLP warns when it stops at max_iter; it is a baseline as users run it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if regression:
            models = {
                "RidgeCV": RidgeCV(alphas=np.logspace(-3, 3, 13)),
                "MLPRegressor": MLPRegressor(
                    hidden_layer_sizes=(120, 120), max_iter=500, random_state=seed
                ),
            }
        else:
            models = {
                "LogisticRegression": LogisticRegression(max_iter=2000),
                "MLPClassifier": MLPClassifier(
                    hidden_layer_sizes=(120, 120), max_iter=500, random_state=seed
                ),
            }
        return {key: float(m.fit(x_tr, y_tr).score(x_te, y_te)) for key, m in models.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_ORDER, choices=ALL_DATASETS)
    parser.add_argument("--configs", nargs="+", default=["defaults (3/3/8)"], choices=CONFIGS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="do not standardize the features")
    parser.add_argument("--no-compile", action="store_true", help="clear accuracy only")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    parser.add_argument(
        "--passes",
        type=int,
        default=5,
        help="simulations of the test rows per compiled model; their mean is reported (each "
        "draws Concrete's approximate rounding and bootstrap errors anew: one pass of 143 "
        "breast cancer rows moves by up to 1.4 points between passes)",
    )
    args = parser.parse_args(argv)

    rows = []
    for name in args.datasets:
        x_tr, x_te, y_tr, y_te = load_split(name, standardize=not args.raw)
        estimator = NeuralNetRegressor if name in REGRESSION else NeuralNetClassifier
        for config_name in args.configs:
            for seed in range(args.seeds):
                start = time.perf_counter()
                model = estimator(random_state=seed, verbose=0, **CONFIGS[config_name])
                model.fit(x_tr, y_tr)
                fit_s = time.perf_counter() - start
                row = {
                    "dataset": name,
                    "config": config_name,
                    "raw_features": args.raw,
                    "seed": seed,
                    "metric": "r2" if name in REGRESSION else "accuracy",
                    "clear": float(model.score(x_te, y_te)),
                    "epochs_run": len(model.history_),
                    "best_epoch": int(model.best_epoch_),
                    "max_active_neurons": model.module_.max_active_neurons(),
                    "hidden_widths": model.module_.hidden_widths(),
                    "fit_s": round(fit_s, 2),
                }
                if not args.no_compile:
                    start = time.perf_counter()
                    try:
                        model.compile(x_tr)
                    except Exception as exc:  # recorded, not fatal: the row says what failed
                        row["compile_error"] = f"{type(exc).__name__}: {exc}"[:300]
                        row["compiled"] = float("nan")
                    row["compile_s"] = round(time.perf_counter() - start, 2)
                if not args.no_compile and "compile_error" not in row:
                    passes = [
                        calibration_score(
                            model.predict(x_te, fhe="simulate"),
                            y_te,
                            classifier=name not in REGRESSION,
                        )
                        for _ in range(max(1, args.passes))
                    ]
                    row["compiled"] = float(np.mean(passes))
                    row["compiled_passes"] = [round(value, 4) for value in passes]
                    row["p_error"] = model.fhe_model_.stats.p_error
                    summary = model.fhe_model_.summary()
                    row["lookup_bits"] = summary["lookup_bits"]
                    row["estimated_s_per_row"] = summary["estimated_seconds_per_row"]
                row.update(baselines(name in REGRESSION, seed, x_tr, y_tr, x_te, y_te))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")

    print(
        "| data set | config | metric | ours clear (worst) | ours compiled (worst) "
        "| compiled - clear (worst) | LogReg / RidgeCV (worst) | MLP (worst) | epochs run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        for config_name in args.configs:
            sel = [r for r in rows if r["dataset"] == name and r["config"] == config_name]
            if not sel:
                continue
            linear = "RidgeCV" if name in REGRESSION else "LogisticRegression"
            mlp = "MLPRegressor" if name in REGRESSION else "MLPClassifier"
            clear = min(r["clear"] for r in sel) * 100
            if "compiled" in sel[0]:
                worst_compiled = float(np.nanmin([r["compiled"] for r in sel])) * 100
                compiled, gap = f"{worst_compiled:.1f}", f"{worst_compiled - clear:+.1f}"
            else:
                compiled = gap = "-"
            epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in sel)
            print(
                f"| {name} | {config_name} | {sel[0]['metric']} | {clear:.1f} | {compiled} "
                f"| {gap} | {min(r[linear] for r in sel) * 100:.1f} "
                f"| {min(r[mlp] for r in sel) * 100:.1f} | {epochs} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
