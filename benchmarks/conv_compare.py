"""fheqnn's convolutional network against Concrete ML 1.9 compiling the same module (issue 28).

For each seed: ``ConvNetClassifier`` (its defaults, or ``--channels``/``--hidden``/``--epochs``)
is trained on digits' 8x8 images (the benchmark split: 75/25, stratified, random_state 0,
raw pixels; the estimator learns its per-channel scaling), then

- compiled by fheqnn in both profiles (the default, and ``exact``: bit-exact, 2**-40 per
  lookup), each measured as ``fheqnn bench`` measures a cell: accuracy clear / integer /
  simulated (10 passes) / encrypted, unstable rows, PBS, compile, keygen, evaluation keys,
  single-row latency (median of ``--rows`` encrypted rows);
- saved with the standardized images and handed to ``benchmarks/conv_reference.py`` in the
  reference environment, which rebuilds the same brevitas module, checks that its outputs are
  fheqnn's, and compiles it with ``compile_brevitas_qat_model`` at Concrete ML's defaults.

Rows go to ``--out`` (JSON lines, appended) and the table to ``--table`` (Markdown, rewritten
from every row of ``--out``). Run on a quiet machine: the ratios are measured in one run.

    python benchmarks/conv_compare.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _digits() -> tuple[np.ndarray, ...]:
    from fheqnn.datasets import load_split

    x_tr, x_te, y_tr, y_te = load_split("digits", standardize=False)
    return x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8), y_tr, y_te


def _ours(est, profile: str, x_tr, y_tr, x_te, y_te, rows: int) -> dict:
    """One compile profile of the trained estimator, measured."""
    from fheqnn import FheModelClient, FheModelServer
    from fheqnn.bench.measure import (
        encrypted_measures,
        integer_accuracy,
        simulated_measures,
        summary_measures,
    )

    start = time.perf_counter()
    est.compile(x_tr, y_tr, exact=profile == "exact")
    compile_total = time.perf_counter() - start
    model = est.fhe_model_
    flat = x_te.reshape(len(x_te), -1)
    row = {"system": "fheqnn", "profile": profile, "compile_total_s": compile_total}
    row.update(summary_measures(model))
    row["acc_integer"] = integer_accuracy(model, flat, y_te)
    row.update(simulated_measures(model, flat, y_te))
    if rows > 0:
        row.update(
            encrypted_measures(model, flat, y_te, rows, rows, FheModelClient, FheModelServer)
        )
    return row


def _bundle(est, seed: int, x_tr, x_te, y_te, path: Path) -> None:
    """What the reference needs: the module's layout and trained state, the standardized
    images (the scaling fheqnn applies in the clear), and fheqnn's outputs to compare."""
    import torch

    module = est.module_

    def standardized(x):
        flat = (x.reshape(len(x), -1) - est.x_mean_) / est.x_scale_
        return flat.reshape(x.shape).astype(np.float32)

    config = {
        name: getattr(module, name)
        for name in (
            "input_shape",
            "n_outputs",
            "channels",
            "kernel_size",
            "strides",
            "hidden",
            "n_w_bits",
            "n_a_bits",
            "quant_narrow",
            "quant_signed",
            "weight_per_channel",
        )
    }
    torch.save(
        {
            "seed": seed,
            "config": config,
            "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "x_train": standardized(x_tr),
            "x_test": standardized(x_te),
            "y_test": y_te,
            "test_logits": est.decision_function(x_te).astype(np.float32),
        },
        path,
    )


def _table(rows: list[dict]) -> str:
    """Markdown: one line per system and profile and seed, then the worst and mean."""
    cols = (
        ("acc clear", "acc_clear"),
        ("acc sim", "acc_simulated"),
        ("acc enc", "acc_encrypted_rows"),
        ("unstable", "simulate_unstable_rows"),
        ("PBS", "pbs"),
        ("latency s", "latency_single_s"),
        ("keygen s", "keygen_s"),
        ("keys MB", "eval_keys_mb"),
        ("compile s", "compile_s"),
    )
    lines = [
        "| system | weight scales | seed | " + " | ".join(c for c, _ in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for row in rows:
        name = row["system"] if row["system"] != "fheqnn" else f"fheqnn {row['profile']}"
        per_channel = row.get("params", {}).get("module__weight_per_channel", True)
        name += " | " + ("per filter" if per_channel else "per layer")
        if "error" in row:
            blank = " | ".join("" for _ in cols[1:])
            lines.append(f"| {name} | {row['seed']} | fails: {row['error'][:120]} | {blank} |")
            continue
        cells = []
        for _, key in cols:
            value = row.get(key)
            if value is None and key == "acc_encrypted_rows":  # fheqnn's name for it
                value = row.get("acc_encrypted")
            cells.append(
                "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
            )
        lines.append(f"| {name} | {row['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--channels``, ``--hidden`` and ``--epochs`` (read back by :func:`network_overrides`)."""
    parser.add_argument("--channels", type=lambda t: tuple(map(int, t.split(","))))
    parser.add_argument("--hidden", type=lambda t: tuple(map(int, t.split(","))) if t else ())
    parser.add_argument("--epochs", type=int)


def network_overrides(args: argparse.Namespace) -> dict:
    """The estimator parameters the options of :func:`add_network_arguments` set."""
    overrides: dict = {}
    if args.channels:
        overrides["module__channels"] = args.channels
    if args.hidden is not None:
        overrides["module__hidden"] = args.hidden
    if args.epochs:
        overrides["max_epochs"] = args.epochs
    return overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_network_arguments(parser)
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per layer (module__weight_per_channel=False): Concrete ML 1.9 "
        "cannot compile per-filter scales in a convolution",
    )
    parser.add_argument("--rows", type=int, default=5, help="encrypted rows (median latency)")
    parser.add_argument("--profiles", nargs="+", default=["default", "exact"])
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="only redraw --table")
    parser.add_argument("--reference-python", default="/work/refenv/bin/python")
    parser.add_argument("--out", type=Path, default=RESULTS / "conv.jsonl")
    parser.add_argument("--table", type=Path, default=RESULTS / "conv.md")
    args = parser.parse_args()

    from fheqnn import ConvNetClassifier
    from fheqnn.bench.reference import run_reference_script
    from fheqnn.contract import range_warnings_off

    if args.table_only:
        args.seeds = []
    x_tr, x_te, y_tr, y_te = _digits()
    overrides = network_overrides(args)
    if args.per_tensor:
        overrides["module__weight_per_channel"] = False
    for seed in args.seeds:
        est = ConvNetClassifier(random_state=seed, verbose=0, **overrides)
        start = time.perf_counter()
        est.fit(x_tr, y_tr)
        fit_s = time.perf_counter() - start
        common = {
            "seed": seed,
            "dataset": "digits",
            "params": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in est.get_params().items()
                if k.startswith("module__") and k != "module__activation_function"
            },
            "max_epochs": est.max_epochs,
            "fit_s": fit_s,
            "acc_clear": float(np.mean(est.predict(x_te) == y_te)),
        }
        results = []
        with range_warnings_off():
            for profile in args.profiles:
                row = {**common, **_ours(est, profile, x_tr, y_tr, x_te, y_te, args.rows)}
                row["load"] = os.getloadavg()[0]
                results.append(row)
                print(
                    json.dumps(
                        {k: v for k, v in row.items() if k not in ("layers", "p_error_curve")}
                    ),
                    flush=True,
                )
        if not args.no_reference:
            with tempfile.TemporaryDirectory() as tmp:
                bundle = Path(tmp) / "bundle.pt"
                _bundle(est, seed, x_tr, x_te, y_te, bundle)
                try:
                    ref = run_reference_script(
                        args.reference_python,
                        "conv_reference.py",
                        ["--bundle", str(bundle), "--rows", str(args.rows)],
                    )
                except RuntimeError as exc:  # kept as a row: what the reference cannot do
                    ref = {"system": "concrete-ml 1.9 compile_brevitas_qat_model", "seed": seed,
                           "error": str(exc).strip().splitlines()[-1]}  # fmt: skip
            results.append(
                {
                    **ref,
                    "dataset": "digits",
                    "params": common["params"],
                    "max_epochs": est.max_epochs,
                }
            )
            print(json.dumps(ref), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in results:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    args.table.write_text(
        "# Convolutional network on digits: fheqnn against Concrete ML 1.9 on the same module\n\n"
        "Made by `python benchmarks/conv_compare.py` (see its docstring); every row of "
        f"`{args.out.name}`.\n\n" + _table(rows)
    )
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
