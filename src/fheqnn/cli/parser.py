"""The argument parser: every subcommand, where it is registered (``native``: it runs Concrete)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..datasets import DATASETS
from ..serving.config import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_REQUEST_CALLS, ServeConfig
from .bench import cmd_bench
from .client import cmd_decrypt, cmd_encrypt, cmd_keygen, cmd_predict
from .compile import cmd_compile, cmd_report
from .demo import cmd_demo
from .options import (
    _add_compile_choices,
    _add_network_options,
    _batch_size,
    _field_type,
    _int_list,
    _positive_int,
)
from .outputs import _add_predictions_output
from .server import DEFAULT_GRACE_SECONDS, DEFAULT_REQUEST_ROWS, cmd_fetch, cmd_run, cmd_serve
from .train import cmd_export, cmd_train


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn train``."""
    p.add_argument("--dataset", choices=DATASETS, help="a data set shipped with scikit-learn")
    p.add_argument("--data", help=".csv or .npy features (last column = target without --labels)")
    p.add_argument("--labels", help=".csv or .npy targets (then every --data column is a feature)")
    p.add_argument(
        "--target",
        help="the target column of --data: a header name, or an index from 0 (-1: the last; "
        "default: the last column)",
    )
    p.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the CSV's first row holds column names (default: detected)",
    )
    p.add_argument("--task", choices=("classifier", "regressor"), default="classifier")
    p.add_argument("--out", required=True, help="folder to create (estimator, ONNX, splits)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--input-shape",
        type=_int_list,
        default=None,
        metavar="C,H,W",
        help="--model conv: the shape of one image, each row of --data being one image "
        "flattened (C order) or .npy images of that shape (default with --dataset digits: "
        "1,8,8)",
    )
    _add_network_options(p)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn export``."""
    p.add_argument("--model", required=True, help="estimator.pkl written by 'train'")
    p.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")


def _compile_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn compile``."""
    from ..compiler.options import MAX_BATCH_SIZE

    p.add_argument("--from", dest="from_dir", help="a 'train' folder (model.onnx, calibration.npy)")
    p.add_argument("--onnx", help="ONNX file")
    p.add_argument("--calibration", help=".npy / .csv calibration rows")
    p.add_argument("--output-spec", help="output_spec.json (class labels, target scaling)")
    p.add_argument(
        "--standardizer",
        help="standardizer.json (per-feature mean and scale applied on the client before "
        "quantization; default with --from: the training folder's)",
    )
    p.add_argument("--n-accum-bits", type=int, default=None, help="accumulator budget (bits)")
    _add_compile_choices(p)
    p.add_argument(
        "--calibration-labels",
        help="labels of the calibration rows (.npy / .csv): the rounding then keeps their "
        "accuracy (default with --from: the training folder's)",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1,
        metavar="N",
        help=f"rows per circuit call (default 1; at most {MAX_BATCH_SIZE}): the circuit takes "
        "N rows at once and clients encrypt rows in chunks of N, the last one padded. Each call "
        "pays a fixed cost (~0.1 s with large keys), so N > 1 raises throughput for many rows; "
        "a single row still takes one call",
    )
    p.add_argument("--out", required=True, help="folder to create (e.g. circuits/NAME)")
    p.add_argument("--overwrite", action="store_true")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn report``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--json", action="store_true", help="print report.json")


def _keygen_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn keygen``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder to create (e.g. keys/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key folder")


def _encrypt_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn encrypt``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help=".npy / .csv rows")
    p.add_argument("--target", help="a column of the --input CSV to drop (name or index)")
    p.add_argument("--rows", type=_positive_int, default=None, help="only the first N rows")
    p.add_argument("--out", required=True, help="ciphertext file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ciphertext file")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn run``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--evaluation-keys", required=True, help="the client's evaluation.keys")
    p.add_argument("--input", required=True, help="ciphertext file from 'encrypt'")
    p.add_argument("--out", required=True, help="result file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ciphertext file")
    p.add_argument(
        "--ray", metavar="ADDRESS", help="spread the rows over Ray: 'local' or a cluster address"
    )
    p.add_argument("--ray-tasks", type=int, default=None, help="Ray tasks (default: its CPUs)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance")


def _decrypt_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn decrypt``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help="result file from 'run'")
    p.add_argument("--proba", action="store_true", help="class probabilities")
    _add_predictions_output(p)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn predict``."""
    p.add_argument("model", help="compiled model folder")
    p.add_argument("--keys", required=True, help="key folder")
    p.add_argument("--input", required=True, help=".npy / .csv rows")
    p.add_argument("--labels", help="true labels (one per --input row), to print the accuracy")
    p.add_argument(
        "--target",
        help="a column of the --input CSV holding the true labels (name or index): dropped from "
        "the features, used for the accuracy",
    )
    p.add_argument("--rows", type=_positive_int, default=None, help="only the first N rows")
    _add_predictions_output(p)
    p.add_argument(
        "--id",
        metavar="COLUMN",
        help="a column of the --input CSV that identifies the rows (name or index): not a "
        "feature; copied as the first column of the --out table",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--server", metavar="URL", help="run on an 'fheqnn serve' service over HTTP")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    p.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help=f"rows per request with --server (default: the smallest multiple of the model's "
        f"rows per circuit call that is at least {DEFAULT_REQUEST_ROWS})",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="a batch job over Ray ('local' or a cluster address; needs --out): chunks of rows "
        "are encrypted here, run on Ray workers, decrypted here and saved in <out>.partial/ as "
        "they finish; the same command resumes an interrupted job (--overwrite discards a "
        "journal of another job)",
    )
    p.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=None,
        metavar="N",
        help="rows per Ray task with --ray (default: 64 x the model's rows per circuit call)",
    )
    p.add_argument(
        "--ray-tasks",
        type=_positive_int,
        default=None,
        metavar="N",
        help="chunks in flight at once with --ray (default: the cluster's CPUs)",
    )
    p.add_argument(
        "--ray-cpus", type=_positive_int, default=None, help="CPUs of a local Ray instance"
    )


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn serve``."""
    p.add_argument("models", nargs="+", help="compiled model folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--key-store", help="folder keeping uploaded evaluation keys across restarts")
    p.add_argument(
        "--max-request-mb",
        type=_field_type(ServeConfig, "max_request_mb"),
        default=None,
        help="largest request body (MB; default: derived from the models served, their "
        "evaluation keys or a ciphertext of --max-request-rows rows, plus 1 MB)",
    )
    p.add_argument("--token-env", metavar="VAR", help="require the token held by this variable")
    p.add_argument(
        "--max-cached-keys",
        type=_field_type(ServeConfig, "max_cached_keys"),
        default=8,
        help="key sets kept deserialized (default 8)",
    )
    p.add_argument(
        "--workers",
        type=_field_type(ServeConfig, "workers"),
        default=None,
        help="encrypted runs at once (threads)",
    )
    p.add_argument(
        "--max-uploads",
        type=_field_type(ServeConfig, "max_uploads"),
        default=ServeConfig.max_uploads,
        help=f"request bodies received and checked at once; others wait their turn "
        f"(default {ServeConfig.max_uploads})",
    )
    p.add_argument(
        "--upload-seconds",
        type=_field_type(ServeConfig, "upload_seconds"),
        default=ServeConfig.upload_seconds,
        help=f"most seconds a request body may take to arrive (408 beyond; default "
        f"{ServeConfig.upload_seconds:g})",
    )
    p.add_argument(
        "--max-request-rows",
        type=_field_type(ServeConfig, "max_request_rows"),
        default=None,
        help=f"most rows per predict request (default: {DEFAULT_MAX_REQUEST_CALLS} x the "
        "model's rows per circuit call); GET /models publishes it",
    )
    p.add_argument(
        "--ray", metavar="ADDRESS", help="deploy on Ray Serve: 'local' or a cluster address"
    )
    p.add_argument(
        "--replicas",
        type=_field_type(ServeConfig, "replicas"),
        default=1,
        help="Ray Serve replicas (default 1)",
    )
    p.add_argument(
        "--autoscale",
        type=_replica_bounds,
        default=None,
        metavar="MIN:MAX",
        help="let Ray Serve run between MIN and MAX replicas, by requests in flight (instead "
        "of --replicas)",
    )
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    p.add_argument(
        "--grace",
        type=_grace_seconds,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help=(
            "at SIGTERM, stop accepting and give requests in progress this long to finish "
            f"before they are cancelled (default {DEFAULT_GRACE_SECONDS:g}; keep it below "
            "your supervisor's kill timeout)"
        ),
    )


def _replica_bounds(text: str) -> tuple[int, int]:
    """An argparse type: ``MIN:MAX`` replicas, 0 <= MIN <= MAX, MAX >= 1."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high))
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(
            f"expected MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, got {text!r}"
        )
    return bounds


def _grace_seconds(text: str) -> float:
    """An argparse type: a number of seconds in [0, 3600] (0: cancel at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 3600] seconds, got {text}")
    return value


def _fetch_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn fetch``."""
    p.add_argument("url", help="the service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("model_id", help="the model id (GET /models lists them)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_FETCH_TIMEOUT,
        metavar="SECONDS",
        help=f"give up unless the whole client part arrived within this time "
        f"(default {DEFAULT_FETCH_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    """argparse type of a duration: a number of seconds > 0."""
    from ..errors import InvalidParameterError
    from ..validation import check_number

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    try:
        return check_number("--timeout", value, 0, low_open=True)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn demo``."""
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="default: breast_cancer for --model mlp, digits for --model conv (the shipped "
        "image data set)",
    )
    p.add_argument(
        "--rows", type=_positive_int, default=10, help="test rows to run encrypted (default 10)"
    )
    _add_compile_choices(p)
    p.add_argument("--circuits", default="circuits", help="where compiled models go")
    p.add_argument("--keys", default="keys", help="where key folders go")
    _add_network_options(p)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``fheqnn bench``."""
    p.add_argument(
        "--profile",
        choices=("quick", "full"),
        default="quick",
        help="quick: iris, 2 prunings x 2 widths, 2 encrypted rows each (a few minutes); full: "
        "4 data sets x 4 prunings x 3 widths x both compile profiles x 3 seeds, real "
        "encryption (hours on 2 cores; an interrupted run resumes)",
    )
    p.add_argument("--datasets", nargs="+", choices=DATASETS, help="override the profile's")
    p.add_argument("--prune", nargs="+", type=float, help="pruning fractions, override")
    p.add_argument(
        "--widths",
        nargs="+",
        type=int,
        metavar="W",
        help="hidden width multipliers (n_hidden_neurons_multiplier), override",
    )
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds, override")
    p.add_argument(
        "--compile-profiles",
        nargs="+",
        choices=("default", "exact"),
        help="compile profiles to sweep, override (--exact: exact only)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs, override")
    p.add_argument("--rows", type=int, default=None, help="encrypted test rows (0: none)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per latency (median)")
    p.add_argument(
        "--throughput-rows",
        type=int,
        default=None,
        metavar="N",
        help="test rows over which encrypted throughput (rows/s) is measured for circuits of "
        "each --throughput-batches size (0: none; quick profile 0, full 32); each size costs a "
        "compilation and a key generation",
    )
    p.add_argument(
        "--throughput-batches",
        nargs="+",
        type=int,
        metavar="B",
        help="rows per circuit call to compare (default 1 8 32; 1 is one call per row)",
    )
    p.add_argument("--seed", type=int, default=None, help="one seed (as --seeds SEED)")
    _add_compile_choices(p, strict=False)
    p.add_argument("--out", default="benchmarks/results/bench.jsonl", help="JSON lines to append")
    p.add_argument("--report-dir", default="benchmarks/results", help="where the table/plot go")
    p.add_argument("--report-only", action="store_true", help="only rebuild table and plot")
    p.add_argument(
        "--compare-reference",
        action="store_true",
        help="also measure Concrete ML 1.9's network (benchmarks/reference.py, its own "
        "environment) at every data set, width, pruning and seed, in the same run",
    )
    p.add_argument(
        "--reference-python",
        default=None,
        help="the reference environment's python (default /work/refenv/bin/python)",
    )


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, help, function, options and whether it runs Concrete.

    ``native``: it calls Concrete's native code, whose SIGINT handler kills the process
    outright (and holds the GIL), so as a program it runs in a child process that Ctrl-C can
    stop cleanly (see :func:`fheqnn.cli.process._in_child`).
    """

    name: str
    help: str
    func: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None]
    native: bool = False


#: Every subcommand, in the order ``fheqnn --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command(
        "train",
        "train a sparse quantized network and save it with its ONNX export",
        cmd_train,
        _train_arguments,
    ),
    Command(
        "export",
        "export a trained estimator (estimator.pkl) to QCDQ ONNX",
        cmd_export,
        _export_arguments,
    ),
    Command(
        "compile",
        "compile an ONNX model to a circuit, with the accumulator check",
        cmd_compile,
        _compile_arguments,
        native=True,
    ),
    Command(
        "report",
        "print a compiled model's bit-width table and circuit statistics",
        cmd_report,
        _report_arguments,
    ),
    Command(
        "keygen",
        "generate keys for a compiled model (client side)",
        cmd_keygen,
        _keygen_arguments,
        native=True,
    ),
    Command(
        "encrypt",
        "quantize and encrypt rows (client side)",
        cmd_encrypt,
        _encrypt_arguments,
        native=True,
    ),
    Command(
        "run",
        "run the circuit on encrypted rows (server side)",
        cmd_run,
        _run_arguments,
        native=True,
    ),
    Command(
        "decrypt",
        "decrypt and post-process results (client side)",
        cmd_decrypt,
        _decrypt_arguments,
        native=True,
    ),
    Command(
        "predict",
        "encrypt -> run -> decrypt (locally, on an 'fheqnn serve' service, or over Ray)",
        cmd_predict,
        _predict_arguments,
        native=True,
    ),
    # Native: every encrypted run re-installs Concrete's SIGINT handler over uvicorn's, so a
    # Ctrl-C after the first request would SIGKILL a server in the foreground process.
    Command(
        "serve",
        "serve compiled models over HTTP (encrypted inference)",
        cmd_serve,
        _serve_arguments,
        native=True,
    ),
    Command(
        "fetch",
        "save a served model's client part (for keygen)",
        cmd_fetch,
        _fetch_arguments,
    ),
    Command(
        "demo",
        "the whole flow on a shipped data set, encrypted inference included",
        cmd_demo,
        _demo_arguments,
        native=True,
    ),
    Command(
        "bench",
        "accuracy and encrypted latency across pruning percentages",
        cmd_bench,
        _bench_arguments,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fheqnn`` command."""
    parser = argparse.ArgumentParser(
        prog="fheqnn",
        description="Sparse quantized neural networks, from training to encrypted inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.set_defaults(func=command.func, native=command.native)
        command.options(p)
    return parser
