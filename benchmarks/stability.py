"""The same answer twice: how often a compiled model's answer changes from run to run, by profile.

For each data set and seed, the default estimator is trained on the benchmark split
(``fheqnn.datasets.load_split``) and compiled with each profile:

- ``default``: the default compile (stability budget ``max_unstable=0`` on the calibration rows);
- ``exact``: the bit-exact profile (``exact=True``: exact rounding or none, 2**-40 per lookup);
- ``fast``: the default without a stability budget (``max_unstable=None``), for comparison:
  what the compiler chose before stability was a criterion.

Per model: compile time, and whether compiling again gave the same program and choices;
lookup precisions, rounding, ``p_error``, Concrete's complexity and estimated keys; the test rows
whose label changed over 10 passes of Concrete's simulation (``unstable``), the same predicted by
the compiler's noise model over 10 draws (``unstable_model``), the rows where the simulation
differed from the integer interpreter in any pass (``differs_from_interpreter``); accuracy in the
clear and simulated (mean of the passes). With ``--encrypt``: key generation time, the size of
the evaluation keys as generated, and one row's encrypted latency (median of 3 runs).

    python benchmarks/stability.py --datasets breast_cancer digits wine iris --seeds 0 1 2 \\
        --out benchmarks/results/stability.jsonl
    python benchmarks/stability.py --datasets breast_cancer --seeds 0 1 2 --profiles default \\
        exact --encrypt --out benchmarks/results/stability_encrypted.jsonl

Prints one JSON line per model (appended to ``--out``), then a Markdown table of the file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fheqnn import NeuralNetClassifier
from fheqnn.bench.measure import SIMULATION_PASSES
from fheqnn.compiler.noise import NoiseSpec
from fheqnn.compiler.serialize import program_to_dict
from fheqnn.contract import range_warnings_off
from fheqnn.datasets import load_split

PROFILES = {"default": {}, "exact": {"exact": True}, "fast": {"max_unstable": None}}
PASSES = SIMULATION_PASSES


def _unstable(predictions: list[np.ndarray]) -> np.ndarray:
    stacked = np.array(predictions)
    return np.any(stacked != stacked[0], axis=0)


def _compile(clf: Any, x: np.ndarray, y: np.ndarray, options: dict[str, Any]) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings(), range_warnings_off():
        warnings.simplefilter("ignore")  # a guard warning is recorded in the summary
        clf.compile(x, y, **options)
    return time.perf_counter() - start


def _choices(model: Any) -> Any:
    return (program_to_dict(model.program), model.stats.p_error, model.stats.complexity)


def measure(dataset: str, seed: int, profile: str, encrypt: bool) -> dict[str, Any]:
    """One model: train, compile twice, simulate, optionally encrypt."""
    x_tr, x_te, y_tr, y_te = load_split(dataset)
    clf = NeuralNetClassifier(random_state=seed, verbose=0).fit(x_tr, y_tr)
    options = PROFILES[profile]
    compile_s = _compile(clf, x_tr, y_tr, options)
    first = _choices(clf.fhe_model_)
    again_s = _compile(clf, x_tr, y_tr, options)
    model = clf.fhe_model_
    summary = model.summary()
    q = model.quantize(x_te)
    with range_warnings_off():
        interpreter = model.predict(x_te)
        simulated = [model.predict(x_te, fhe="simulate") for _ in range(PASSES)]
    noise, rng = NoiseSpec.at(model.stats.p_error), np.random.default_rng(seed)
    program, contract = model.program, model.contract
    modelled = [
        contract.postprocess(program.dequantize_output(program.run_integer(q, noise.draw(rng))))
        for _ in range(PASSES)
    ]
    row: dict[str, Any] = {
        "dataset": dataset,
        "seed": seed,
        "profile": profile,
        "compile_s": round(compile_s, 2),
        "compile_again_s": round(again_s, 2),
        "same_choices_twice": _choices(model) == first,
        "lookup_bits": summary["lookup_bits"],
        "rounding": "exact" if summary["rounding_exact"] else "approximate",
        "p_error": summary["p_error"],
        "complexity": summary["complexity"],
        "pbs": summary["pbs_count"],
        "keys_estimate_mb": round(summary["evaluation_keys_bytes_estimate"] / 1e6, 1),
        "bit_exact": summary["stability"]["bit_exact"],
        "unstable_calibration_rows": summary["stability"]["unstable_calibration_rows"],
        "test_rows": len(y_te),
        "unstable": int(_unstable(simulated).sum()),
        "unstable_model": int(_unstable(modelled).sum()),
        "differs_from_interpreter": int(np.any(np.array(simulated) != interpreter, axis=0).sum()),
        "acc_clear": round(float(np.mean(clf.predict(x_te) == y_te)), 4),
        "acc_interpreter": round(float(np.mean(interpreter == y_te)), 4),
        "acc_simulated": round(float(np.mean(np.array(simulated) == y_te)), 4),
    }
    if encrypt:
        row.update(_encrypted(model, x_te))
    return row


def _encrypted(model: Any, x_te: np.ndarray) -> dict[str, Any]:
    """Key generation, the size of the generated evaluation keys, one row's latency."""
    start = time.perf_counter()
    model.keygen()
    keygen_s = time.perf_counter() - start
    keys = model.circuit.keys.evaluation.serialize()
    q = model.quantize(x_te[:1])
    model.run_integer(q, "execute")  # one-off set-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.run_integer(q, "execute")
        times.append(time.perf_counter() - start)
    return {
        "keygen_s": round(keygen_s, 2),
        "eval_keys_mb": round(len(keys) / 1e6, 1),
        "latency_s": round(statistics.median(times), 3),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| data set | seed | profile | lookups | p_error | complexity | compile s | same twice "
        "| unstable (Concrete, model) of test rows | sim != interpreter | acc clear | acc sim "
        "| keygen s | keys MB | latency s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p_error = "default" if r["p_error"] is None else f"{r['p_error']:.0e}"
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['profile']} | "
            f"{'/'.join(map(str, r['lookup_bits']))} {r['rounding'][:6]} | {p_error} | "
            f"{r['complexity']:.3g} | {r['compile_s']} | "
            f"{'yes' if r['same_choices_twice'] else 'NO'} | "
            f"{r['unstable']}, {r['unstable_model']} of {r['test_rows']} | "
            f"{r['differs_from_interpreter']} | {r['acc_clear']:.3f} | {r['acc_simulated']:.3f} | "
            f"{r.get('keygen_s', '-')} | {r.get('eval_keys_mb', '-')} | {r.get('latency_s', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument("--encrypt", action="store_true", help="also keygen and time one row")
    parser.add_argument("--out", default="benchmarks/results/stability.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for dataset in args.datasets:
        for seed in args.seeds:
            for profile in args.profiles:
                row = measure(dataset, seed, profile, args.encrypt)
                print(json.dumps(row), flush=True)
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
