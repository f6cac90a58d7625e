"""Offline batches over Ray workers, with no shared disk.

The compiled server program and the evaluation keys are put once in Ray's object store
(:func:`ship`); every task runs one inputs envelope and answers its outputs envelope. A Ray
worker process keeps the deserialized circuit and keys for its later tasks.

- :func:`run_batch`: the ciphertexts of one inputs envelope, split over Ray tasks; the same
  result envelope as :meth:`~fheqnn.runtime.server.FheModelServer.run` (rows are independent).
- :func:`score_on_ray`: a client's clear rows, in chunks: each chunk is encrypted here (the
  secret key never leaves this process), run by a Ray task, decrypted here as it comes back and
  saved in a :class:`~.batch_journal.ChunkJournal`, with at most ``tasks`` chunks in flight (the
  ciphertexts of a large input are never all held at once). Chunks the journal already holds
  are not run again, so an interrupted job resumes.

Tasks whose worker process or node dies are run again by Ray, up to :data:`MAX_RETRIES` times;
results are put back in row order by chunk index, and their count is checked, so that every row
comes back exactly once. Ray must be initialized (:func:`~.ray_backend.init_ray`); ray is
imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.artifacts import (
    MANIFEST,
    SERVER_FILES,
    ArtifactError,
    ModelFolder,
    check_keys_id,
    open_model_folder,
)
from ..runtime.envelope import Envelope
from .batch_journal import ChunkJournal, JournalError, rows_digest
from .shipped_models import unpack

logger = logging.getLogger(__name__)

#: Times Ray runs a task again after its worker process or its node died (system failures
#: only: an error raised by the task itself is not retried).
MAX_RETRIES = 3

#: Seconds between two checks for finished tasks (a stop signal is handled between them).
WAIT_SECONDS = 0.2

# Per Ray worker process: compiled servers by model id (loaded once, reused by later tasks).
_WORKER_SERVERS: dict[str, Any] = {}


def _worker_server(model_id: str, files: dict[str, bytes]) -> Any:
    from ..runtime.server import FheModelServer

    server = _WORKER_SERVERS.get(model_id)
    if server is None:
        folder = unpack({"model_id": model_id, "name": "server", "files": files})
        # One circuit call per task at a time: Ray spreads the parallelism over tasks.
        server = FheModelServer(folder, workers=1)
        _WORKER_SERVERS[model_id] = server
    return server


def _run_rows(
    model_id: str, files: dict[str, bytes], keys: bytes, inputs: bytes
) -> tuple[bytes, str]:
    """The Ray task: run an inputs envelope; its outputs envelope and the id of the node."""
    import ray

    server = _worker_server(model_id, files)
    server.register_evaluation_keys(keys)  # cached after the first task: a hash check
    return bytes(server.run(inputs)), ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class Shipped:
    """A server program and evaluation keys in Ray's object store (see :func:`ship`)."""

    model_id: str
    key_id: str
    files: Any
    keys: Any


def ship(folder: ModelFolder, evaluation_keys: bytes, key_id: str) -> Shipped:
    """Check the evaluation keys against the model, then put both the server program of
    ``folder`` (opened with its server files) and the keys in Ray's object store.

    Raises:
        EnvelopeError: the keys belong to another model or key, or are malformed.
    """
    import ray

    keys_env = Envelope.from_bytes(
        evaluation_keys,
        kind="evaluation_keys",
        model_id=folder.model_id,
        key_id=key_id,
        what="evaluation keys",
    )
    check_keys_id(keys_env)
    files = {name: folder.file(name).read_bytes() for name in (MANIFEST, *SERVER_FILES)}
    return Shipped(folder.model_id, key_id, ray.put(files), ray.put(evaluation_keys))


def cluster_cpus() -> int:
    """CPUs of the Ray cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(
    shipped: Shipped,
    jobs: Iterator[tuple[int, bytes]],
    *,
    in_flight: int,
    on_result: Callable[[int, bytes, str], None],
) -> None:
    """Run inputs envelopes as Ray tasks, at most ``in_flight`` at once.

    Args:
        shipped: the program and keys (:func:`ship`).
        jobs: (index, inputs envelope) pairs, taken only when a task slot is free, so that a
            lazy iterator holds at most ``in_flight`` envelopes.
        in_flight: tasks submitted and not yet collected (>= 1).
        on_result: called with (index, outputs envelope, node id) as each task finishes (in
            the order they finish); an exception there stops the run.

    On any exception (a stop signal included) the tasks in flight are cancelled.
    """
    import ray

    run_rows = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_run_rows)
    pending: dict[Any, int] = {}
    try:
        while True:
            while len(pending) < in_flight:
                job = next(jobs, None)
                if job is None:
                    break
                index, inputs = job
                ref = run_rows.remote(shipped.model_id, shipped.files, shipped.keys, inputs)
                pending[ref] = index
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                outputs, node = ray.get(ref)
                on_result(pending.pop(ref), outputs, node)
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)


def run_batch(
    model_folder: str | Path,
    inputs: bytes,
    evaluation_keys: bytes,
    *,
    tasks: int | None = None,
) -> bytes:
    """Run a ciphertext batch over Ray workers; the same result envelope as a local run.

    Ray must be initialized (:func:`~.ray_backend.init_ray`). Labels are checked here before
    anything is shipped, so a ciphertext or keys of another model fail as they would locally.
    Each task is run again up to :data:`MAX_RETRIES` times if its worker or node dies.

    Args:
        model_folder: the compiled model (its server program is shipped to the workers).
        inputs: an inputs envelope of one or more ciphertexts (each a chunk of the model's
            ``batch_size`` rows).
        evaluation_keys: the client's evaluation-key envelope.
        tasks: how many Ray tasks to split the ciphertexts into (default: the cluster's CPUs).

    Raises:
        ArtifactError: the model folder is bad, or Ray returned another number of results.
        EnvelopeError: inputs or keys are malformed or belong to another model or key.
    """
    folder = open_model_folder(model_folder, need=SERVER_FILES)
    model_id = folder.model_id
    env = Envelope.from_bytes(inputs, kind="inputs", model_id=model_id, what="inputs")
    shipped = ship(folder, evaluation_keys, env.key_id)
    if not env.payloads:
        return Envelope("outputs", model_id, env.key_id, (), env.meta).to_bytes()
    tasks = max(1, min(int(tasks or cluster_cpus()), len(env.payloads)))
    bounds = [round(i * len(env.payloads) / tasks) for i in range(tasks + 1)]
    parts: dict[int, tuple[bytes, ...]] = {}

    def collect(index: int, blob: bytes, node: str) -> None:
        part = Envelope.from_bytes(blob, kind="outputs", model_id=model_id, key_id=env.key_id)
        parts[index] = part.payloads

    jobs = (
        (i, Envelope("inputs", model_id, env.key_id, env.payloads[a:b], env.meta).to_bytes())
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    )
    run_tasks(shipped, jobs, in_flight=tasks, on_result=collect)
    outputs = [p for i in sorted(parts) for p in parts[i]]
    if len(outputs) != len(env.payloads):
        raise ArtifactError(
            f"Ray returned {len(outputs)} results for {len(env.payloads)} ciphertexts"
        )
    return Envelope("outputs", model_id, env.key_id, tuple(outputs), env.meta).to_bytes()


@dataclass(frozen=True)
class BatchScore:
    """Result of :func:`score_on_ray`.

    Attributes:
        outputs: decrypted float outputs, before post-processing (n_rows, n_outputs).
        predictions: post-processed outputs (class labels, values or raw outputs).
        reused_chunks: chunks found finished in the journal (not run again).
        computed_chunks: chunks run by this call.
        seconds: wall time of this call (s).
        nodes: chunks run by this call on each Ray node (node id -> count).
    """

    outputs: np.ndarray
    predictions: np.ndarray
    reused_chunks: int
    computed_chunks: int
    seconds: float
    nodes: dict[str, int]


def score_on_ray(
    client: Any,
    x: np.ndarray,
    journal: ChunkJournal,
    *,
    tasks: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BatchScore:
    """Encrypt -> run on Ray -> decrypt the chunks of ``x`` that ``journal`` lacks.

    Args:
        client: a :class:`~fheqnn.runtime.client.FheModelClient` with keys loaded.
        x: the rows, already checked (``client.part.check_and_warn``), that the journal's
            header was made for (n_rows, n_features).
        journal: where finished chunks are saved (and found, when resuming).
        tasks: chunks in flight at once (default: the cluster's CPUs).
        progress: called with the number of rows of each chunk saved.

    Raises:
        JournalError: ``x`` or the client are not those of the journal's header.
        ArtifactError: the model folder lacks its server program, or Ray returned a chunk
            with another number of rows.
    """
    start = time.perf_counter()
    folder = open_model_folder(client.folder.path, need=SERVER_FILES)
    key_id = client.key_info.key_id
    if (journal.header["rows_sha256"], journal.header["key_id"]) != (rows_digest(x), key_id):
        raise JournalError(f"{journal.path} was made for other rows or keys than these")
    reused = journal.done()
    todo = [i for i in range(journal.n_chunks) if i not in reused]
    nodes: Counter[str] = Counter()
    if todo:
        shipped = ship(folder, client.evaluation_keys(), key_id)

        def save(index: int, blob: bytes, node: str) -> None:
            a, b = journal.bounds(index)
            raw = client.decrypt_raw(blob)
            if len(raw) != b - a:
                raise ArtifactError(
                    f"Ray returned {len(raw)} rows for chunk {index}, expected {b - a}"
                )
            journal.save(index, raw)
            nodes[node] += 1
            if progress is not None:
                progress(b - a)

        jobs = ((i, client.encrypt(x[slice(*journal.bounds(i))], check_range=False)) for i in todo)
        in_flight = max(1, int(tasks or cluster_cpus()))
        run_tasks(shipped, jobs, in_flight=in_flight, on_result=save)
        logger.info("chunks per Ray node: %s", dict(nodes))
    raw = journal.gather()
    return BatchScore(
        raw,
        client.part.postprocess(raw),
        len(reused),
        len(todo),
        time.perf_counter() - start,
        dict(nodes),
    )
