"""The ``fheqnn`` command-line tool.

Library code logs; this module is the one place that prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from .datasets import DATASETS


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import NeuralNetClassifier
    from .datasets import load_split

    x_tr, x_te, y_tr, y_te = load_split(args.dataset)
    print(
        f"data set {args.dataset}: {len(x_tr)} training rows, {len(x_te)} test rows, "
        f"{x_tr.shape[1]} features, {len(np.unique(y_tr))} classes"
    )
    clf = NeuralNetClassifier(
        module__n_layers=args.n_layers,
        module__n_w_bits=args.n_w_bits,
        module__n_a_bits=args.n_a_bits,
        module__n_accum_bits=args.n_accum_bits,
        module__n_prune_neurons_percentage=args.prune,
        max_epochs=args.epochs,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )
    start = time.perf_counter()
    clf.fit(x_tr, y_tr)
    fit_s = time.perf_counter() - start
    module = clf.module_
    print(
        f"trained in {fit_s:.1f} s: {args.n_w_bits}-bit weights, {args.n_a_bits}-bit activations, "
        f"accumulators <= {args.n_accum_bits} bits, at most {module.max_active_neurons()} "
        f"active weights per neuron, hidden widths {module.hidden_widths()}"
    )
    print(f"test accuracy (clear, quantized): {clf.score(x_te, y_te) * 100:.1f} %")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fheqnn`` command."""
    parser = argparse.ArgumentParser(
        prog="fheqnn",
        description="Sparse quantized neural networks, from training to encrypted inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train the default network on a data set shipped with scikit-learn",
        description="Train the default sparse quantized network on a scikit-learn data set "
        "(75/25 stratified split, standardized features) and print its test accuracy.",
    )
    demo.add_argument("--dataset", choices=DATASETS, default="breast_cancer")
    demo.add_argument("--n-layers", type=int, default=3)
    demo.add_argument("--n-w-bits", type=int, default=3)
    demo.add_argument("--n-a-bits", type=int, default=3)
    demo.add_argument("--n-accum-bits", type=int, default=8)
    demo.add_argument(
        "--prune", type=float, default=0.0, help="fraction of hidden neurons to prune"
    )
    demo.add_argument("--epochs", type=int, default=200)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fheqnn`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import FheqnnError

    try:
        return int(args.func(args))
    except FheqnnError as exc:
        print(f"fheqnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
