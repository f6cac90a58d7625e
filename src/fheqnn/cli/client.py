"""The client side: ``keygen``, ``encrypt``, ``decrypt``, and ``predict`` (encrypt -> run ->
decrypt, locally or on a server)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import EXIT_OK, CliError, _read_envelope, _rows, _say, _Step, _write_bytes
from .compile import _by_name
from .outputs import _check_output_file, _check_predictions_output, _give_predictions
from .ray_predict import check_ray_options, predict_on_ray
from .server import _remote_round_trip


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..runtime import FheModelClient

    client = FheModelClient(args.model)
    with _Step(f"generating keys for {args.model} into {args.keys}"):
        info = client.keygen(args.keys, overwrite=args.overwrite)
    _say(
        f"key id {info.key_id}; evaluation keys {info.evaluation_keys_bytes / 1e6:.1f} MB "
        f"({Path(args.keys) / 'evaluation.keys'}); the secret key stays in {args.keys}/"
    )
    return EXIT_OK


def cmd_encrypt(args: argparse.Namespace) -> int:
    from ..runtime import FheModelClient

    out = _check_output_file(
        args.out, inputs=(args.input,), envelope=True, overwrite=args.overwrite
    )
    client = FheModelClient(args.model, args.keys)
    x, _ = _inference_rows(args.input, client.part, target=args.target, first_rows=args.rows)
    with _Step(f"encrypting {_rows(len(x))}"):
        blob = client.encrypt(x)
    _write_bytes(out, blob)
    _say(f"wrote {args.out} ({len(blob)} bytes)")
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    from ..runtime import FheModelClient
    from ..runtime.artifacts import envelope_limits

    def check_out() -> Path | None:
        return _check_predictions_output(args, inputs=(args.input,))

    out = check_out()
    client = FheModelClient(args.model, args.keys)
    if args.proba:
        client.check_proba()  # before reading anything
    blob = _read_envelope(args.input, "encrypted result", envelope_limits(client.folder)["outputs"])
    from ..runtime.envelope import EnvelopeError

    try:
        pred = client.decrypt_proba(blob) if args.proba else client.decrypt(blob)
    except EnvelopeError as exc:
        raise CliError(f"--input {args.input}: {exc}") from exc
    _give_predictions(
        out,
        np.asarray(pred),
        check_out,
        classes=client.part.output_spec.classes,
        proba=args.proba,
    )
    return EXIT_OK


def _encrypted_predict(client: Any, server: Any, x: np.ndarray, quiet: bool) -> Any:
    """The runtime's encrypted round trip, with a progress bar."""
    from tqdm.auto import tqdm

    from ..runtime import encrypted_predict

    with tqdm(total=len(x), desc="encrypted rows", unit="row", disable=quiet, leave=False) as bar:
        return encrypted_predict(client, server, x, progress=bar.update)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..runtime import FheModelClient, FheModelServer

    def check_out() -> Path | None:
        return _check_predictions_output(args, inputs=(args.input, args.labels))

    out = check_out()
    if args.id is not None and (out is None or out.suffix.lower() != ".csv"):
        raise CliError(
            f"--id {args.id} copies that column into the table of predictions: give --out "
            "FILE.csv too"
        )
    check_ray_options(args, out)
    client = FheModelClient(args.model, args.keys)
    x, y, ids = _prediction_data(args, client.part)
    if y is not None and len(y) != len(x):
        raise CliError(
            f"{args.labels} has {len(y)} labels but {args.input} has {len(x)} rows; expected "
            "one label per row"
        )
    if args.rows:
        x = x[: args.rows]
        y = None if y is None else y[: args.rows]
        ids = None if ids is None else (ids[0][: args.rows], ids[1])
    if args.ray:
        assert out is not None  # check_ray_options refused --ray without --out
        score = predict_on_ray(
            args, client, x, out, lambda p: _give_predictions(out, p, check_out, ids=ids)
        )
        pred = np.asarray(score.predictions)
    else:
        if args.server:
            trip = _remote_round_trip(args, client, x)
        else:
            trip = _encrypted_predict(client, FheModelServer(args.model), x, args.quiet)
        pred = np.asarray(trip.predictions)
        _give_predictions(out, pred, check_out, ids=ids)
        _say(
            f"{_rows(len(x))}, server time {trip.server_seconds:.2f} s "
            f"({trip.seconds_per_row:.3f} s per row)"
        )
    if y is not None:
        _say_score(pred, y, client.part.output_spec.kind)
    return EXIT_OK


def _say_score(pred: np.ndarray, y: np.ndarray, kind: str) -> None:
    """How decrypted predictions compare with true labels: R^2 and mean absolute error for a
    regressor (exact equality of real values says nothing), else accuracy. A model without
    post-processing (``raw``) is read as the compiler's guard reads it: one output is a value,
    several are class scores (their argmax is the class index)."""
    if kind == "raw" and pred.ndim == 2:
        if pred.shape[1] == 1:
            pred, kind = pred[:, 0], "regressor"
        else:
            pred = pred.argmax(axis=1)
    if kind == "regressor":
        from sklearn.metrics import mean_absolute_error, r2_score

        try:
            truth = np.asarray(y, dtype=np.float64).reshape(pred.shape)
        except ValueError as exc:
            raise CliError(
                f"the true values (shape {np.shape(y)}) are not numbers of the predictions' "
                f"shape {pred.shape}"
            ) from exc
        r2 = f"R^2 {r2_score(truth, pred):.4f}, " if len(pred) >= 2 else ""
        _say(f"{r2}mean absolute error {mean_absolute_error(truth, pred):.4g} (encrypted)")
        return
    if (pred.dtype.kind == "U") != (y.dtype.kind == "U"):
        # Class labels read back as text on one side only: compare them as text.
        pred, y = pred.astype(str), y.astype(str)
    _say(f"accuracy (encrypted): {np.mean(pred == y):.4f}")


def _prediction_data(
    args: argparse.Namespace, part: Any
) -> tuple[np.ndarray, np.ndarray | None, tuple[Sequence[str], str] | None]:
    """``predict``'s rows, true labels (from --labels, or the --target column of --input) and
    row ids (the --id column and its name)."""
    from ..tabular import MAX_INFERENCE_ROWS, inference_byte_limit, read_labels

    if args.labels and args.target is not None:
        raise CliError(
            "give either --labels FILE or --target COLUMN (the labels are that column of "
            "--input), not both"
        )
    table = _inference_table(args.input, part, target=args.target, row_ids=args.id)
    x, y = _by_name(table, part.feature_names, args.input), table.y
    if args.labels:
        y = read_labels(args.labels, max_bytes=inference_byte_limit(1), max_rows=MAX_INFERENCE_ROWS)
    ids = None if table.row_ids is None else (table.row_ids, table.row_ids_name or "id")
    return x, y, ids


def _inference_table(
    path: str | Path,
    part: Any,
    *,
    target: str | None,
    first_rows: int | None = None,
    row_ids: str | None = None,
) -> Any:
    """An inference input file read for a model (its feature count and names)."""
    from ..tabular import MAX_INFERENCE_ROWS, inference_byte_limit, read_table

    return read_table(
        path,
        target=target,
        n_features=part.n_features,
        max_bytes=inference_byte_limit(part.n_features),
        max_rows=MAX_INFERENCE_ROWS,
        first_rows=first_rows,
        what="input",
        model_names=part.feature_names,
        row_ids=row_ids,
    )


def _inference_rows(
    path: str | Path, part: Any, *, target: str | None, first_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows (and the ``target`` column, if named) of an inference input file, its columns in
    the model's order: found by name when both the file's header and the model know names."""
    table = _inference_table(path, part, target=target, first_rows=first_rows)
    return _by_name(table, part.feature_names, path), table.y
