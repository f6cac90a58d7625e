"""Evaluation keys received by the service, content-addressed by key id.

Layout: ``<root>/<model_id>/<key_id>.keys``, each file the evaluation-key envelope exactly as the
client sent it. The key id is the hash of the keys, so a file's name says what it must hold; a
file is written through a temporary file and a rename (never half-written) and checked against
its name and model when it is read back, so a damaged file is ignored, never used. Several
replicas (processes, machines on a shared folder) may use one store: writes of one id are
identical and the rename is atomic.

Without a folder the store keeps a bounded number of envelopes in memory (LRU) and forgets them
on restart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..fileio import atomic_copy, atomic_write_bytes
from ..runtime.artifacts import check_keys_id
from ..runtime.envelope import Envelope, EnvelopeError

logger = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")
SUFFIX = ".keys"
# A temporary file older than this was left by a crash (a live write takes seconds).
STALE_TMP_SECONDS = 3600.0


def is_id(value: str) -> bool:
    """Whether ``value`` has the shape of a model or key id (32 lowercase hex digits)."""
    return bool(_ID.fullmatch(value))


class KeyStore:
    """Evaluation-key envelopes by (model id, key id).

    Args:
        root: the folder (created if needed); ``None`` keeps envelopes in memory only.
        max_memory_keys: envelopes kept when there is no folder (LRU, each one is megabytes).
    """

    def __init__(self, root: str | Path | None, *, max_memory_keys: int = 8) -> None:
        self.root = None if root is None else Path(root)
        self._memory: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._max_memory = max(1, int(max_memory_keys))
        self._lock = threading.Lock()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        assert self.root is not None
        now = time.time()
        for tmp in self.root.glob(f"*/.*{SUFFIX}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
                    logger.info("removed %s, left by an interrupted write", tmp)
            except FileNotFoundError:
                continue

    def _path(self, model_id: str, key_id: str) -> Path:
        # Ids are checked by the caller's envelope and here: never a path from the network.
        if not (is_id(model_id) and is_id(key_id)):
            raise EnvelopeError(f"malformed model or key id: {model_id!r}, {key_id!r}")
        assert self.root is not None
        return self.root / model_id / f"{key_id}{SUFFIX}"

    def has(self, model_id: str, key_id: str) -> bool:
        """Whether keys of this id are stored for this model."""
        if self.root is None:
            with self._lock:
                return (model_id, key_id) in self._memory
        if not (is_id(model_id) and is_id(key_id)):
            return False
        return self._path(model_id, key_id).is_file()

    def put(self, model_id: str, key_id: str, envelope: bytes | Path) -> bool:
        """Store an evaluation-key envelope already checked by the caller.

        Args:
            envelope: its bytes, or a file holding them (copied in chunks to the folder, read
                whole only by a store in memory).

        Returns:
            ``True`` if the keys were new, ``False`` if they were already stored.
        """
        if self.root is None:
            if isinstance(envelope, Path):
                envelope = envelope.read_bytes()
            with self._lock:
                known = (model_id, key_id) in self._memory
                self._memory[(model_id, key_id)] = envelope
                self._memory.move_to_end((model_id, key_id))
                while len(self._memory) > self._max_memory:
                    self._memory.popitem(last=False)
            return not known
        path = self._path(model_id, key_id)
        if path.is_file():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(envelope, Path):
            atomic_copy(envelope, path)
        else:
            atomic_write_bytes(path, envelope)
        logger.info("stored evaluation keys %s of model %s", key_id, model_id)
        return True

    def get(self, model_id: str, key_id: str) -> bytes | None:
        """The stored envelope, or ``None`` if unknown (or damaged on disk: logged, not used)."""
        if self.root is None:
            with self._lock:
                blob = self._memory.get((model_id, key_id))
                if blob is not None:
                    self._memory.move_to_end((model_id, key_id))
                return blob
        if not (is_id(model_id) and is_id(key_id)):
            return None
        path = self._path(model_id, key_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            env = Envelope.from_bytes(
                blob, kind="evaluation_keys", model_id=model_id, key_id=key_id, what=str(path)
            )
            check_keys_id(env)
        except EnvelopeError as exc:
            logger.warning("ignoring damaged evaluation keys: %s", exc)
            return None
        return blob

    def key_ids(self, model_id: str) -> list[str]:
        """Ids of the keys stored for a model."""
        if self.root is None:
            with self._lock:
                return [k for m, k in self._memory if m == model_id]
        folder = self.root / model_id
        if not is_id(model_id) or not folder.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}") if is_id(p.stem))
