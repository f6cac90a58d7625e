"""``train`` and ``export``: the model side (a training run folder, its ONNX file)."""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import EXIT_OK, CliError, _say, _write_bytes
from .outputs import _check_typed_file_output, _is_onnx_file


def check_model_options(args: argparse.Namespace, dataset: str | None) -> None:
    """Refuse options that do not apply to ``--model``, before anything is read or trained."""
    if args.model == "conv":
        if dataset is not None and dataset != "digits":
            raise CliError(
                f"--model conv takes images; {dataset} holds table rows. The shipped image "
                "data set is digits (8x8 images): --dataset digits"
            )
        if args.n_layers != 3 or args.multiplier != 4:
            raise CliError(
                "--n-layers and --multiplier shape the MLP; a convolutional network is shaped "
                "by --channels"
            )
        if getattr(args, "task", "classifier") != "classifier":
            raise CliError("--model conv trains a classifier (--task classifier)")
        return
    if args.channels is not None or getattr(args, "input_shape", None) is not None:
        raise CliError(
            "--channels and --input-shape describe a convolutional network: add --model conv"
        )


def _estimator(args: argparse.Namespace, task: str) -> Any:
    if args.model == "conv":
        return _conv_estimator(args)
    from .. import NeuralNetClassifier, NeuralNetRegressor

    cls = NeuralNetClassifier if task == "classifier" else NeuralNetRegressor
    multiplier = int(args.multiplier) if float(args.multiplier).is_integer() else args.multiplier
    return cls(
        module__n_layers=args.n_layers,
        module__n_hidden_neurons_multiplier=multiplier,
        module__n_w_bits=args.n_w_bits,
        module__n_a_bits=args.n_a_bits,
        module__n_accum_bits=args.n_accum_bits,
        module__n_prune_neurons_percentage=args.prune,
        max_epochs=200 if args.epochs is None else args.epochs,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )


def _conv_estimator(args: argparse.Namespace) -> Any:
    """The convolutional classifier the options describe (its defaults where they are
    silent)."""
    from ..model.conv_estimator import ConvNetClassifier

    est = ConvNetClassifier(
        module__n_w_bits=args.n_w_bits,
        module__n_a_bits=args.n_a_bits,
        module__n_accum_bits=args.n_accum_bits,
        module__n_prune_neurons_percentage=args.prune,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )
    if args.channels is not None:
        est.set_params(module__channels=args.channels)
    if args.epochs is not None:
        est.set_params(max_epochs=args.epochs)
    return est


def _images(args: argparse.Namespace, x: np.ndarray, source: str) -> np.ndarray:
    """Rows of ``x`` as images of ``--input-shape`` (``--dataset digits``: 1,8,8)."""
    shape = args.input_shape
    known = None  # the shape the data itself gives
    if args.dataset == "digits":
        known = (1, 8, 8)
    elif args.data and str(args.data).endswith(".npy"):
        from ..tabular.npy_reader import _npy_header

        # A file of images (rows, channels, height, width) or (rows, height, width) says it.
        stored, _ = _npy_header(Path(args.data), "data")
        if len(stored) in (3, 4):
            known = tuple(stored[1:]) if len(stored) == 4 else (1, *stored[1:])
    if shape is not None and known is not None and tuple(shape) != known:
        raise CliError(
            f"--input-shape {','.join(map(str, shape))} does not match {source}'s images, "
            f"of shape {known}"
        )
    shape = shape or known
    if shape is None:
        raise CliError(
            "--model conv needs the shape of one image: --input-shape C,H,W (or a .npy file "
            "of images, shape (rows, channels, height, width))"
        )
    if len(shape) != 3:
        raise CliError(f"--input-shape must be channels,height,width, got {shape}")
    size = int(np.prod(shape))
    if x.shape[1] != size:
        raise CliError(
            f"--input-shape {','.join(map(str, shape))} holds {size} values but {source} has "
            f"{x.shape[1]} features per row"
        )
    return x.reshape(len(x), *shape)


def _training_data(args: argparse.Namespace) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """The train/test split of the training data, and what to record of its columns.

    Every check on the file (and on the labels: classes, rows per class) runs here, before
    anything is trained or written.
    """
    from ..tabular import MAX_TRAINING_BYTES, check_training_rows, read_labels, read_table

    if args.dataset:
        if args.data or args.labels or args.target is not None:
            raise CliError("--dataset cannot be combined with --data, --labels or --target")
        from ..datasets import load_split

        # A convolutional network learns its own per-channel scaling from the raw pixels.
        return load_split(args.dataset, standardize=args.model != "conv"), {"data": args.dataset}
    if not args.data:
        raise CliError("give --dataset NAME or --data FILE (.csv or .npy)")
    if args.labels and args.target is not None:
        raise CliError(
            "give either --labels FILE (every column of --data is a feature) or --target COLUMN "
            "(the target is a column of --data), not both"
        )
    header = {"auto": None, "yes": True, "no": False}[args.header]
    target = None if args.labels else (-1 if args.target is None else args.target)
    table = read_table(
        args.data, target=target, header=header, max_bytes=MAX_TRAINING_BYTES, what="data"
    )
    x, y = table.x, table.y
    source = str(args.data)
    if args.labels:
        y = read_labels(args.labels, max_bytes=MAX_TRAINING_BYTES)
        source = f"{args.data} with labels {args.labels}"
        if len(y) != len(x):
            raise CliError(
                f"{args.data} has {len(x)} data rows but {args.labels} has {len(y)} labels; "
                "expected one label per row"
            )
    assert y is not None  # a target column or a labels file
    check_training_rows(y, args.task, source=source)
    if args.task == "classifier" and np.asarray(y).dtype.kind in "fiu":
        values = np.unique(y)
        whole = bool(np.all(np.mod(values, 1) == 0))
        if not whole or len(values) > 10:
            _say(
                f"note: the target holds {len(values)} distinct numbers"
                + ("" if whole else ", not all whole")
                + ": training a classifier, one class per value (give --task regressor to "
                "predict numbers)"
            )
    if args.task == "regressor":
        y = y.astype(np.float64)
    from sklearn.model_selection import train_test_split

    stratify = y if args.task == "classifier" else None
    split = tuple(train_test_split(x, y, test_size=0.25, stratify=stratify, random_state=0))
    info = {
        "data": source,
        "feature_names": None if table.feature_names is None else list(table.feature_names),
        "target_name": table.target_name,
    }
    return split, info


def cmd_train(args: argparse.Namespace) -> int:
    from ..runtime.artifacts import TRAINING_RUN, check_destination

    out = Path(args.out)
    inputs = tuple(p for p in (args.data, args.labels) if p)
    check_destination(
        out, overwrite=args.overwrite, what="training folder", kind=TRAINING_RUN, inputs=inputs
    )
    check_model_options(args, args.dataset)
    (x_tr, x_te, y_tr, y_te), data_info = _training_data(args)
    est = _estimator(args, args.task)
    if args.model == "conv":
        x_tr = _images(args, x_tr, data_info["data"])
        x_te = _images(args, x_te, data_info["data"])
        _say(f"training a convolutional classifier on {len(x_tr)} images of {x_tr.shape[1:]}")
    else:
        _say(f"training a {args.task} on {len(x_tr)} rows x {x_tr.shape[1]} features")
    start = time.perf_counter()
    est.fit(x_tr, y_tr)
    fit_s = time.perf_counter() - start
    from ..interrupts import raise_if_interrupted

    raise_if_interrupted()  # a Ctrl-C that something swallowed: nothing is written
    from ..contract import range_warnings_off

    with range_warnings_off():  # the test part of the training data itself
        score = float(est.score(x_te, y_te))
    from ..model.training_run import write_training_run
    from ..runtime.artifacts import write_folder_atomically

    info = {"task": args.task, **data_info, "fit_seconds": fit_s, "test_score": score}

    def write(folder: Path) -> None:
        write_training_run(folder, est, (x_tr, x_te, y_tr, y_te), info)

    write_folder_atomically(out, write, overwrite=args.overwrite, kind=TRAINING_RUN, inputs=inputs)
    metric = "accuracy" if args.task == "classifier" else "R^2"
    _say(f"trained in {fit_s:.1f} s; test {metric} (clear, quantized): {score:.4f}")
    _say(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if not path.is_file():
        raise CliError(f"estimator file {str(path)!r} does not exist")
    out = _check_typed_file_output(
        args.out,
        suffix=".onnx",
        what="an ONNX model",
        is_ours=_is_onnx_file,
        overwrite=args.overwrite,
        inputs=(path,),
    )
    try:
        # A pickle runs code when loaded: only load estimator.pkl files you wrote yourself.
        est = pickle.loads(path.read_bytes())
    except Exception as exc:
        raise CliError(
            f"{path} is not an estimator saved by 'fheqnn train' (cannot unpickle: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(est, "export_onnx"):
        raise CliError(
            f"{path} holds a {type(est).__name__}, not an estimator saved by 'fheqnn train'"
        )
    model = est.export_onnx()
    _write_bytes(out, model.SerializeToString())
    _say(
        f"exported {args.out}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes"
    )
    return EXIT_OK
