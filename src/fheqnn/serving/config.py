"""Configuration of the encrypted inference service (plain data: picklable for Ray replicas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError
from ..validation import Bounds, bounded, check_choice, check_fields

#: Seconds ``fetch`` waits for a whole client archive by default (``fetch --timeout``).
DEFAULT_FETCH_TIMEOUT = 120.0
#: Room left above the largest body a served model implies, when the limit is derived (bytes).
BODY_LIMIT_MARGIN = 1 << 20
#: Without ``max_request_rows``, a request may hold this many circuit calls' worth of rows (64
#: rows for a model of one row per call, 64 x its batch size otherwise).
DEFAULT_MAX_REQUEST_CALLS = 64


@dataclass(frozen=True)
class ServeConfig:
    """What one instance of the service serves, and its limits.

    Attributes:
        model_folders: compiled model folders to serve (each verified when the app is built).
        key_store: folder where uploaded evaluation keys are kept (they survive a restart and are
            shared by replicas); ``None`` keeps them in memory only.
        max_request_mb: largest request body accepted (MB, 10**6 bytes); larger ones get 413.
            ``None`` (the default): derived from the models served, so that their own
            evaluation keys and ciphertexts of ``max_request_rows`` rows always fit (see
            :func:`fheqnn.serving.service.default_body_limit`).
        token: the bearer token every request must carry; ``None`` means no authentication.
        max_cached_keys: deserialized evaluation key sets kept in memory per model (LRU).
        workers: encrypted runs executed at once (threads; default: the machine's cores).
        backend: ``"local"`` (uvicorn) or ``"ray"`` (Ray Serve), reported by ``/health``.
        replicas: number of replicas of the app, reported by ``/health``.
        max_uploads: request bodies received and checked at once (default 2). A body is
            written to a temporary file as it arrives, never held whole in memory, and only the
            payloads of a checked envelope are read back; requests beyond this count wait for a
            free slot before their body is read (the client's bytes wait in the network
            buffers), so that memory and temporary disk space stay bounded whatever the number
            of clients. Evaluation keys are moreover deserialized one set at a time.
        upload_seconds: most seconds a request body may take to arrive once it has its upload
            slot (408 beyond), so that slow or stalled clients cannot hold the ``max_uploads``
            slots (default 300: 256 MB at under 1 MB/s).
        max_request_rows: most rows a ciphertext of one predict request may hold (413 beyond,
            naming the cap); ``None``: :data:`DEFAULT_MAX_REQUEST_CALLS` circuit calls' worth,
            per model (see :meth:`request_rows_cap`). ``GET /models`` publishes each model's
            cap and :class:`~fheqnn.serving.client.HttpClient` splits rows to fit it.
        key_registry: keep evaluation keys in the Ray cluster's key registry
            (:mod:`fheqnn.serving.ray_keys`) instead of ``key_store``: what replicas on Ray
            Serve do, so that keys uploaded to one replica reach every replica on every node.
    """

    model_folders: tuple[Path, ...]
    key_store: Path | None = None
    max_request_mb: float | None = bounded(None, Bounds(False, 0, low_open=True, optional=True))
    token: str | None = field(default=None, repr=False)
    max_cached_keys: int = bounded(8, Bounds(True, 1))
    workers: int | None = bounded(None, Bounds(True, 1, optional=True))
    backend: str = "local"
    replicas: int = bounded(1, Bounds(True, 1))
    max_uploads: int = bounded(2, Bounds(True, 1))
    max_request_rows: int | None = bounded(None, Bounds(True, 1, optional=True))
    upload_seconds: float = bounded(300.0, Bounds(False, 0, low_open=True))
    key_registry: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_folders", tuple(Path(p) for p in self.model_folders))
        if self.key_store is not None:
            object.__setattr__(self, "key_store", Path(self.key_store))
        if not self.model_folders:
            raise InvalidParameterError("give at least one compiled model folder to serve")
        check_fields(self)
        check_choice("backend", self.backend, ("local", "ray"))
        if self.token is not None and not self.token:
            raise InvalidParameterError("the token must not be empty")

    @property
    def max_request_bytes(self) -> int | None:
        """Largest request body accepted (bytes), ``None`` when derived from the models."""
        return None if self.max_request_mb is None else int(self.max_request_mb * 1_000_000)

    def request_rows_cap(self, batch_size: int) -> int:
        """Most rows per predict request for a model of ``batch_size`` rows per circuit call."""
        if self.max_request_rows is not None:
            return self.max_request_rows
        return DEFAULT_MAX_REQUEST_CALLS * max(1, batch_size)
