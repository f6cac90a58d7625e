"""Configuration of the encrypted inference service (plain data: picklable for Ray replicas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError

DEFAULT_MAX_REQUEST_MB = 256.0


@dataclass(frozen=True)
class ServeConfig:
    """What one instance of the service serves, and its limits.

    Attributes:
        model_folders: compiled model folders to serve (each verified when the app is built).
        key_store: folder where uploaded evaluation keys are kept (they survive a restart and are
            shared by replicas); ``None`` keeps them in memory only.
        max_request_mb: largest request body accepted (MB, 10**6 bytes); larger ones get 413.
        token: the bearer token every request must carry; ``None`` means no authentication.
        max_cached_keys: deserialized evaluation key sets kept in memory per model (LRU).
        workers: encrypted runs executed at once (threads; default: the machine's cores).
        backend: ``"local"`` (uvicorn) or ``"ray"`` (Ray Serve), reported by ``/health``.
        replicas: number of replicas of the app, reported by ``/health``.
    """

    model_folders: tuple[Path, ...]
    key_store: Path | None = None
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB
    token: str | None = field(default=None, repr=False)
    max_cached_keys: int = 8
    workers: int | None = None
    backend: str = "local"
    replicas: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_folders", tuple(Path(p) for p in self.model_folders))
        if self.key_store is not None:
            object.__setattr__(self, "key_store", Path(self.key_store))
        if not self.model_folders:
            raise InvalidParameterError("give at least one compiled model folder to serve")
        if not self.max_request_mb > 0:
            raise InvalidParameterError(
                f"max_request_mb must be > 0 (MB), got {self.max_request_mb}"
            )
        if self.max_cached_keys < 1:
            raise InvalidParameterError(f"max_cached_keys must be >= 1, got {self.max_cached_keys}")
        if self.workers is not None and self.workers < 1:
            raise InvalidParameterError(f"workers must be >= 1, got {self.workers}")
        if self.replicas < 1:
            raise InvalidParameterError(f"replicas must be >= 1, got {self.replicas}")
        if self.backend not in ("local", "ray"):
            raise InvalidParameterError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.token is not None and not self.token:
            raise InvalidParameterError("the token must not be empty")

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted (bytes)."""
        return int(self.max_request_mb * 1_000_000)
