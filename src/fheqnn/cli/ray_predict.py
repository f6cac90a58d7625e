"""``predict --ray``: a resumable batch job over a Ray cluster, with no shared disk.

Chunks of rows are encrypted here, run by Ray tasks and decrypted here as they come back
(:func:`fheqnn.serving.ray_batch.score_on_ray`); each finished chunk is saved in a journal beside
``--out`` (``<out>.partial/``), so that the same command run again after a stop or a crash
does not run them again. ``--out`` is written (atomically, in row order) once every chunk is
done, then the journal is removed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError, _rows, _say, rows_per_part
from .server import _take_back_stop_signals

#: Circuit calls per chunk of ``predict --ray`` by default: a chunk of 64 x the model's batch
#: size rows is seconds of work per task, while the ciphertexts in flight stay a few MB each.
DEFAULT_CHUNK_CALLS = 64

#: Options that only mean something with ``--ray``.
RAY_OPTIONS = ("chunk_rows", "ray_tasks", "ray_cpus")


def check_ray_options(args: argparse.Namespace, out: Path | None) -> None:
    """Refuse a ``predict`` whose Ray options do not fit together, before any work."""
    if not args.ray:
        given = [f"--{name.replace('_', '-')}" for name in RAY_OPTIONS if getattr(args, name)]
        if given:
            raise CliError(f"{', '.join(given)} only apply with --ray ADDRESS")
        return
    if args.server:
        raise CliError("give either --server URL or --ray ADDRESS, not both")
    if out is None:
        raise CliError(
            "--ray needs --out FILE.csv or FILE.npy: results are saved chunk by chunk beside "
            "it, so that an interrupted job resumes"
        )


def chunk_rows(batch_size: int, requested: int | None) -> int:
    """Rows per chunk (one Ray task) for a model of ``batch_size`` rows per circuit call:
    :data:`DEFAULT_CHUNK_CALLS` calls by default; a requested count that is not a multiple of
    the batch size is kept, with a note on what the padding costs."""
    return rows_per_part(
        batch_size,
        requested,
        default=DEFAULT_CHUNK_CALLS * batch_size,
        option="--chunk-rows",
        part="chunk",
    )


def _ray_connected() -> bool:
    """Whether this process is already a driver of a Ray cluster (a caller's, left as is)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def predict_on_ray(
    args: argparse.Namespace,
    client: Any,
    x: np.ndarray,
    out: Path,
    write: Callable[[np.ndarray], None],
) -> Any:
    """Score ``x`` over Ray, resuming from ``out``'s journal; ``write(predictions)`` writes
    ``out``, then the journal is removed. Returns the
    :class:`~fheqnn.serving.ray_batch.BatchScore`."""
    from ..serving.batch_journal import ChunkJournal, JournalMismatchError, job_header, journal_path

    rows_per_chunk = chunk_rows(client.batch_size, args.chunk_rows)
    x = client.part.check_and_warn(x)  # once for all rows; chunks are encrypted unchecked
    header = job_header(client.model_id, client.key_info.key_id, x, rows_per_chunk)
    try:
        journal = ChunkJournal.open(
            journal_path(out), header, client.part.n_outputs, replace=args.overwrite
        )
    except JournalMismatchError as exc:
        raise CliError(
            f"{exc}: remove it, or pass --overwrite to discard it and start over"
        ) from exc
    reused = journal.done()
    reused_rows = sum(b - a for a, b in map(journal.bounds, reused))
    if reused:
        _say(
            f"resuming from {journal.path}/: {len(reused)} of {journal.n_chunks} chunks "
            f"({_rows(reused_rows)}) are done and not run again"
        )
    score = _score(args, client, x, journal, reused_rows)
    write(score.predictions)
    journal.remove()
    rate = (len(x) - reused_rows) / score.seconds if score.seconds > 0 else 0.0
    _say(
        f"{_rows(len(x))}: {score.computed_chunks} chunks run on {len(score.nodes)} Ray "
        f"node(s) in {score.seconds:.1f} s ({rate:.2f} rows/s), {score.reused_chunks} reused"
    )
    return score


def _score(
    args: argparse.Namespace, client: Any, x: np.ndarray, journal: Any, reused_rows: int
) -> Any:
    """The Ray part of :func:`predict_on_ray`: connect (or start a local instance), score with
    a progress bar, disconnect; at a stop or an error, say how many rows are saved."""
    from tqdm.auto import tqdm

    from ..serving import ray_backend
    from ..serving.ray_batch import score_on_ray

    ours = not _ray_connected()
    try:
        nodes = ray_backend.init_ray(args.ray, num_cpus=args.ray_cpus)
        _take_back_stop_signals()  # ray.init installs its own SIGTERM handler
        _say(f"Ray: nodes {', '.join(nodes)}")
        with tqdm(
            total=len(x),
            initial=reused_rows,
            desc="encrypted rows",
            unit="row",
            disable=args.quiet,
            leave=False,
        ) as bar:
            return score_on_ray(client, x, journal, tasks=args.ray_tasks, progress=bar.update)
    except BaseException:
        saved = journal.rows_done()
        if saved:
            _say(
                f"{saved} of {_rows(len(x))} are saved in {journal.path}/: the same command "
                "resumes from there"
            )
        raise
    finally:
        if ours:
            ray_backend.shutdown(serve_too=False)
