"""The state behind the service: the models it serves, the key store, request bodies received
to disk within bounds, and the thread pool of encrypted runs (:class:`Service`); the HTTP routes
are in :mod:`.app`."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..concrete_seam import (
    KeySizes,
    key_sizes,
    load_client_specs,
    serialized_evaluation_keys_bytes,
)
from ..runtime.artifacts import (
    CLIENT_FILES,
    CLIENT_SPECS_FILE,
    REPORT_FILE,
    ModelFolder,
    envelope_limits,
    key_id_of,
    open_model_folder,
)
from ..runtime.client import CLIENT_KEYSET_OVERHEAD
from ..runtime.envelope import Envelope, EnvelopeError, envelope_bytes
from ..runtime.server import FheModelServer
from .archive import client_archive
from .config import BODY_LIMIT_MARGIN, ServeConfig
from .keystore import KeyStore

logger = logging.getLogger(__name__)

ENVELOPE_MEDIA_TYPE = "application/octet-stream"
ARCHIVE_MEDIA_TYPE = "application/zip"
KEY_ID_HEADER = "X-Key-Id"
RUN_SECONDS_HEADER = "X-Run-Seconds"
T = TypeVar("T")


#: Bytes an envelope adds to its payload, at most (magic, checksum, header).
_ENVELOPE_ROOM = 1 << 16


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServedModel:
    """One compiled model as the service holds it."""

    server: FheModelServer
    folder: ModelFolder
    summary: dict[str, Any]
    key_sizes: KeySizes
    #: Most rows per predict request, the circuit's rows per call, and the most bytes a
    #: ciphertext of ``max_rows`` rows can take.
    max_rows: int
    batch_size: int
    inputs_limit: int
    #: The exact size of this model's evaluation-key envelope (``None``: a key set whose
    #: serialized size fheqnn cannot compute; the expanded size then bounds it).
    evaluation_keys_bytes: int | None
    _archive: bytes | None = field(default=None, repr=False)

    @property
    def keys_limit(self) -> int:
        """The most bytes an evaluation-key upload for this model may have."""
        if self.evaluation_keys_bytes is not None:
            return self.evaluation_keys_bytes
        return self.server.limits["evaluation_keys"]

    @property
    def secret_key_bytes(self) -> tuple[tuple[int, int], ...]:
        """The least and most bytes a secret key file of this model has: the secret keys alone
        (``secret.keys`` since key format 3), or Concrete's whole key set (before)."""
        sizes = self.key_sizes
        alone = (sizes.secret, sizes.secret + CLIENT_KEYSET_OVERHEAD)
        whole_low = sizes.secret + sizes.evaluation
        return alone, (whole_low, sizes.secret + sizes.evaluation_full + (1 << 20))

    @property
    def model_id(self) -> str:
        """The compiled model's identity."""
        return self.server.model_id

    def archive(self) -> bytes:
        """The client part as a zip archive (built once)."""
        if self._archive is None:
            self._archive = client_archive(self.folder)
        return self._archive


def load_model(path: Any, config: ServeConfig) -> ServedModel:
    """Load and verify a compiled model folder for serving (server, client and report files)."""
    server = FheModelServer(path, max_cached_keys=config.max_cached_keys, workers=config.workers)
    folder = open_model_folder(path, need=(*CLIENT_FILES, REPORT_FILE))
    report = folder.read_json(REPORT_FILE)
    manifest = folder.manifest
    specs = load_client_specs(folder.read_bytes(CLIENT_SPECS_FILE))
    sizes = key_sizes(specs)
    payload = serialized_evaluation_keys_bytes(specs)
    id_shape = "0" * 32  # ids are 32 hex digits
    keys_bytes = (
        None
        if payload is None
        else envelope_bytes("evaluation_keys", folder.model_id, id_shape, (payload,))
    )
    batch_size = report.get("batch_size", 1)  # reports before batching: one row
    max_rows = config.request_rows_cap(batch_size)
    summary = {
        "model_id": folder.model_id,
        "name": folder.path.name,
        "n_features": manifest.get("n_features"),
        "n_outputs": manifest.get("n_outputs"),
        "batch_size": batch_size,
        "max_request_rows": max_rows,
        "pbs_count": report.get("pbs_count"),
        "hidden_neurons": report.get("hidden_neurons"),
        "n_accum_bits": report.get("n_accum_bits"),
        "max_bit_width": report.get("max_bit_width"),
        "evaluation_keys_bytes": keys_bytes,
        "evaluation_keys_bytes_estimate": report.get("evaluation_keys_bytes_estimate"),
        "input_ciphertext_bytes": report.get("input_ciphertext_bytes"),
        "output_ciphertext_bytes": report.get("output_ciphertext_bytes"),
        "created": manifest.get("created"),
        "concrete_python": manifest.get("versions", {}).get("concrete-python"),
    }
    inputs_limit = envelope_limits(folder, max_rows=max_rows)["inputs"]
    return ServedModel(
        server, folder, summary, sizes, max_rows, batch_size, inputs_limit, keys_bytes
    )


def default_body_limit(models: Any) -> int:
    """The request body limit when none is configured: the largest body the served models
    imply (their evaluation-key envelope, a ciphertext of their ``max_request_rows``) plus
    :data:`~fheqnn.serving.config.BODY_LIMIT_MARGIN`."""
    largest = max(max(m.keys_limit, m.inputs_limit) for m in models)
    return largest + BODY_LIMIT_MARGIN


def _is_secret_key(data: bytes) -> bool:
    """Whether ``data`` deserializes as Concrete's full key set (which holds the secret key)."""
    from ..concrete_seam import fhe

    try:
        fhe().Keys.deserialize(bytes(data))
    except Exception:
        return False
    return True


def _key_store(config: ServeConfig) -> Any:
    """Where uploaded keys are kept: the Ray cluster's registry (replicas), or a folder or
    memory (one process)."""
    if config.key_registry:
        from .ray_keys import RayKeyStore

        return RayKeyStore()
    return KeyStore(config.key_store, max_memory_keys=config.max_cached_keys)


class Service:
    """The state behind the app: models, key store, the thread pool of encrypted runs."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models: dict[str, ServedModel] = {}
        for path in config.model_folders:
            model = load_model(path, config)
            if model.model_id in self.models:
                logger.warning("%s is the same compiled model as another one: served once", path)
            self.models[model.model_id] = model
        self.store = _key_store(config)
        #: Largest request body accepted (bytes): configured, or derived from the models.
        self.max_request_bytes = config.max_request_bytes or default_body_limit(
            self.models.values()
        )
        self.workers = config.workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        #: Request bodies are written here as they arrive (owner-only, removed at close).
        self.body_dir = Path(tempfile.mkdtemp(prefix="fheqnn-bodies-"))
        #: Bodies received and checked at once (``config.max_uploads``).
        self.upload_slots = asyncio.Semaphore(config.max_uploads)
        #: Requests waiting for one of these slots.
        self.uploads_waiting = 0
        #: Evaluation keys are read and deserialized one set at a time (each takes its size
        #: in memory, twice while it is deserialized).
        self.key_lock = threading.RLock()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The thread pool of encrypted runs and key deserialization (made on first use)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fheqnn-run")
        return self._pool

    def close(self) -> None:
        """Stop the thread pool: runs not started are dropped; a run in progress (native
        code, which cannot be stopped) is not waited for. Remove the bodies' folder.

        The server calls it at shutdown, once requests in progress have finished or been
        cancelled after the grace period: nothing waits for their answer any more. Key
        uploads write atomically (a stopped one leaves no file).
        """
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        shutil.rmtree(self.body_dir, ignore_errors=True)

    @asynccontextmanager
    async def received_body(self, request: Request, limit: int) -> AsyncIterator[Path]:
        """The request body as a temporary file, removed when the block ends (on every path).

        A declared Content-Length over ``limit`` is refused (413) at once; then the request
        waits for one of the ``max_uploads`` slots, and the body is written to the file as it
        arrives, refused as soon as it passes ``limit`` or once it has taken more than
        ``upload_seconds`` (408). The slot is held until the block ends: read what is needed
        from the file inside it.
        """
        check_declared_length(request, limit)
        self.uploads_waiting += 1
        try:
            await self.upload_slots.acquire()
        finally:
            self.uploads_waiting -= 1
        try:
            fd, name = tempfile.mkstemp(dir=self.body_dir, suffix=".body")
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as handle:
                    try:
                        await asyncio.wait_for(
                            receive_into(request, handle, limit), self.config.upload_seconds
                        )
                    except TimeoutError as exc:
                        raise ServiceError(
                            408,
                            f"the request body did not all arrive within "
                            f"{self.config.upload_seconds:g} s",
                        ) from exc
                yield path
            finally:
                path.unlink(missing_ok=True)
        finally:
            self.upload_slots.release()

    async def off_loop(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the pool, not on the event loop.

        Raises:
            ServiceError: 503 (retryable) when the server cancels the request because it is
                stopping and the request ran past the grace period (uvicorn cancels it).
        """
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, partial(func, *args))
        except asyncio.CancelledError:
            raise ServiceError(
                503, "the service stopped before this request finished: send it again"
            ) from None

    def model(self, model_id: str) -> ServedModel:
        """The served model of this id (404 if unknown)."""
        model = self.models.get(model_id)
        if model is None:
            raise ServiceError(404, f"unknown model {model_id!r}: GET /models lists the models")
        return model

    # ------------------------------------------------------------------ keys
    def _maybe_secret_key(self, path: Path, size: int) -> bool:
        """Whether the file of ``size`` bytes is a secret key file (see ``secret_key_bytes``),
        raw or as the payload of an envelope: only a file of a size one of the served models'
        secret key files can have is read and tried."""
        for model in self.models.values():
            if any(low <= size <= high + _ENVELOPE_ROOM for low, high in model.secret_key_bytes):
                with self.key_lock:
                    data = path.read_bytes()
                    if _is_secret_key(data):
                        return True
                    try:
                        env = Envelope.from_bytes(data, kind="evaluation_keys")
                    except EnvelopeError:
                        return False
                    del data
                    return len(env.payloads) == 1 and _is_secret_key(env.payloads[0])
        return False

    def register_keys(self, path: Path, model_id: str | None) -> tuple[str, str, bool]:
        """Check, cache and store evaluation keys received in the file ``path``; returns
        (model id, key id, new). The file's size is checked before anything is read, then one
        upload at a time (``key_lock``) has its keys read (never the whole file twice),
        checked and deserialized: one set of keys in memory at once, however many uploads."""
        if model_id is not None:
            self.model(model_id)
        # Against every served model: keys of another one get their 409 below.
        most = max(m.keys_limit for m in self.models.values())
        size = path.stat().st_size
        if size > most and self._maybe_secret_key(path, size):
            raise ServiceError(400, "this is a secret key: it never leaves the client")
        if size > most:
            raise ServiceError(
                413,
                f"evaluation keys of {size} bytes: the served models' keys take at most {most} "
                "bytes (keys of another model?)",
            )
        with self.key_lock:
            return self._register_keys(path, size, model_id)

    def _register_keys(self, path: Path, size: int, model_id: str | None) -> tuple[str, str, bool]:
        """:meth:`register_keys` once the size is checked, holding ``key_lock``."""
        try:
            env = Envelope.from_file(path, kind="evaluation_keys", what="evaluation keys")
        except EnvelopeError as exc:
            if self._maybe_secret_key(path, size):
                raise ServiceError(
                    400,
                    "this is a secret key: it never leaves the client; send evaluation.keys",
                ) from exc
            raise ServiceError(400, str(exc)) from exc
        if model_id is not None and env.model_id != model_id:
            raise ServiceError(
                409, f"evaluation keys of compiled model {env.model_id}, not of {model_id}"
            )
        model = self.model(env.model_id)
        if len(env.payloads) != 1 or key_id_of(env.payloads[0]) != env.key_id:
            if len(env.payloads) == 1 and self._payload_is_secret_key(env.payloads[0]):
                raise ServiceError(400, "this is a secret key: it never leaves the client")
            raise ServiceError(
                400, f"evaluation keys labelled {env.key_id} do not hash to that id (tampered?)"
            )
        if self.store.has(model.model_id, env.key_id) and model.server.has_keys(env.key_id):
            return model.model_id, env.key_id, False
        try:
            model.server.register_envelope(env)
        except EnvelopeError as exc:
            if self._payload_is_secret_key(env.payloads[0]):
                raise ServiceError(400, "this is a secret key: it never leaves the client") from exc
            raise ServiceError(400, str(exc)) from exc
        new = self.store.put(model.model_id, env.key_id, path)
        return model.model_id, env.key_id, new

    def _payload_is_secret_key(self, payload: bytes) -> bool:
        with self.key_lock:
            return _is_secret_key(payload)

    def knows_keys(self, model_id: str, key_id: str) -> bool:
        """Whether evaluation keys of ``key_id`` are cached or stored for the model."""
        model = self.model(model_id)
        return model.server.has_keys(key_id) or self.store.has(model_id, key_id)

    # ------------------------------------------------------------------ runs
    def read_inputs(self, model_id: str, key_id: str, path: Path) -> Envelope:
        """The ciphertext envelope received in the file ``path``, checked: its size before it
        is read, then its checksum, labels and rows."""
        model = self.model(model_id)
        size = path.stat().st_size
        cap = f"this service takes at most {model.max_rows} rows per request"
        if size > model.inputs_limit:
            raise ServiceError(
                413,
                f"ciphertext of {size} bytes, more than {model.max_rows} rows of this model take "
                f"({model.inputs_limit} bytes): {cap}",
            )
        try:
            env = Envelope.from_file(path, kind="inputs", what="ciphertext")
        except EnvelopeError as exc:
            raise ServiceError(400, str(exc)) from exc
        if env.model_id != model_id:
            raise ServiceError(
                409, f"ciphertext of compiled model {env.model_id}, sent to model {model_id}"
            )
        if env.key_id != key_id:
            raise ServiceError(
                409, f"ciphertext encrypted with key {env.key_id}, but {KEY_ID_HEADER} is {key_id}"
            )
        if not env.payloads:
            raise ServiceError(400, "the ciphertext holds no rows")
        n_rows = env.meta.get("n_rows", len(env.payloads) * model.batch_size)
        calls = -(-model.max_rows // model.batch_size)
        if len(env.payloads) > calls or (isinstance(n_rows, int) and n_rows > model.max_rows):
            rows = n_rows if isinstance(n_rows, int) else len(env.payloads) * model.batch_size
            raise ServiceError(413, f"a ciphertext of {rows} rows: {cap}; send fewer at a time")
        return env

    def _keys_for(self, model: ServedModel, key_id: str) -> Any:
        """The deserialized evaluation keys: cached, or read back from the store (404)."""
        keys = model.server.cached_keys(key_id)
        if keys is not None:
            return keys
        with self.key_lock:  # one set deserialized at a time
            keys = model.server.cached_keys(key_id)
            if keys is not None:
                return keys
            blob = self.store.get(model.model_id, key_id)
            if blob is None:
                raise ServiceError(
                    404, f"unknown evaluation keys {key_id}: upload them with POST /keys first"
                )
            try:
                env = Envelope.from_bytes(
                    blob, kind="evaluation_keys", model_id=model.model_id, key_id=key_id
                )
                del blob
                return model.server.register_envelope(env)
            except EnvelopeError as exc:
                raise ServiceError(400, str(exc)) from exc

    def predict(
        self, model_id: str, env: Envelope, should_stop: Callable[[], bool] | None = None
    ) -> tuple[bytes, float]:
        """Run the circuit on a checked ciphertext envelope (:meth:`read_inputs`); returns the
        result envelope and seconds. ``should_stop`` is asked before each circuit call (see
        :meth:`FheModelServer.run_envelope`)."""
        model = self.model(model_id)
        keys = self._keys_for(model, env.key_id)
        start = time.perf_counter()
        try:
            out = model.server.run_envelope(env, keys=keys, should_stop=should_stop)
        except EnvelopeError as exc:
            raise ServiceError(400, str(exc)) from exc
        except (RuntimeError, ValueError) as exc:
            # Labels and deserialization were checked: Concrete refusing the values means a
            # ciphertext that does not fit this circuit (wrong shape or encoding).
            logger.warning("run refused on model %s: %s", model_id, exc)
            raise ServiceError(400, f"the circuit cannot run on this ciphertext: {exc}") from exc
        return out, time.perf_counter() - start


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse (413) a request whose declared Content-Length is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError as exc:
        raise ServiceError(400, f"malformed Content-Length {declared!r}") from exc
    if size > limit:
        raise ServiceError(413, f"request body of {size} bytes, the limit is {limit} bytes")


async def receive_into(request: Request, handle: BinaryIO, limit: int) -> int:
    """Write the request body to ``handle`` as it arrives; refused with 413 as soon as it
    passes ``limit`` bytes. Returns its size. Only the chunk in hand is held in memory."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"request body over the limit of {limit} bytes")
            handle.write(chunk)
            handle.flush()  # on disk, not in the writer's buffer
    except ClientDisconnect as exc:
        raise ServiceError(400, "the client went away before the end of its request") from exc
    except OSError as exc:
        logger.error("cannot keep a request body: %s", exc)
        raise ServiceError(507, "the service has no room for this request body now") from exc
    return size
