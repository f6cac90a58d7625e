"""The server side: runs a compiled circuit on ciphertexts with a client's evaluation keys.

Stateless apart from a cache of deserialized evaluation keys by key id, so that repeated requests
from one client do not pay for deserializing them again. Never sees a clear value.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..concrete_seam import deserialize_evaluation_keys, load_server
from ..concrete_seam import fhe as _fhe
from ..interrupts import call_interruptibly
from .artifacts import (
    SERVER_FILE,
    SERVER_FILES,
    ArtifactError,
    ModelFolder,
    check_keys_id,
    envelope_limits,
    open_model_folder,
)
from .envelope import Envelope, EnvelopeError

logger = logging.getLogger(__name__)


class RunCancelledError(Exception):
    """A run stopped between circuit calls because its ``should_stop`` said so."""


class FheModelServer:
    """Server of a compiled model folder.

    Args:
        model_folder: the compiled model (verified against its manifest on load).
        max_cached_keys: how many clients' evaluation keys stay deserialized in memory.
        workers: the ciphertexts of a request (one per chunk of the model's ``batch_size``
            rows) run in parallel on this many threads (default: all cores).
    """

    def __init__(
        self, model_folder: str | Path, *, max_cached_keys: int = 4, workers: int | None = None
    ) -> None:
        self.folder: ModelFolder = open_model_folder(model_folder, need=SERVER_FILES)
        try:
            self._server = load_server(self.folder.file(SERVER_FILE))
        except (RuntimeError, OSError, ValueError) as exc:
            raise ArtifactError(f"{self.folder.file(SERVER_FILE)} cannot be loaded: {exc}") from exc
        #: The most bytes an envelope of each kind can hold for this model (see
        #: :func:`~fheqnn.runtime.artifacts.envelope_limits`).
        self.limits: dict[str, int] = envelope_limits(self.folder)
        self._keys: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_cached_keys = max(1, int(max_cached_keys))
        self.workers = workers or os.cpu_count() or 1
        self.last_run_seconds = 0.0
        #: Circuit calls run so far (one per payload of each inputs envelope).
        self.calls_run = 0

    @property
    def model_id(self) -> str:
        """The compiled model's identity."""
        return self.folder.model_id

    def register_evaluation_keys(self, evaluation_keys: bytes) -> str:
        """Deserialize and cache a client's evaluation keys; returns their key id."""
        return self._register_bytes(evaluation_keys)[0]

    def _register_bytes(self, evaluation_keys: bytes) -> tuple[str, Any]:
        """:meth:`register_evaluation_keys`, returning the key id and the deserialized keys."""
        _check_size(evaluation_keys, self.limits["evaluation_keys"], "evaluation keys")
        env = Envelope.from_bytes(
            evaluation_keys, kind="evaluation_keys", model_id=self.model_id, what="evaluation keys"
        )
        return env.key_id, self.register_envelope(env)

    def register_envelope(self, env: Envelope) -> Any:
        """:meth:`register_evaluation_keys` of an envelope already parsed (and so verified);
        returns the deserialized keys (cached, unless a newer set pushes them out)."""
        if env.kind != "evaluation_keys" or env.model_id != self.model_id:
            raise EnvelopeError(f"not evaluation keys of compiled model {self.model_id}")
        check_keys_id(env)
        with self._lock:
            if env.key_id in self._keys:
                self._keys.move_to_end(env.key_id)
                return self._keys[env.key_id]
        try:
            keys = deserialize_evaluation_keys(env.payloads[0])
        except RuntimeError as exc:
            raise EnvelopeError(
                f"evaluation keys {env.key_id} cannot be deserialized: {exc}"
            ) from exc
        with self._lock:
            self._keys[env.key_id] = keys
            while len(self._keys) > self.max_cached_keys:
                self._keys.popitem(last=False)
        logger.info("cached evaluation keys %s", env.key_id)
        return keys

    def has_keys(self, key_id: str) -> bool:
        """Whether the evaluation keys of ``key_id`` are cached."""
        with self._lock:
            return key_id in self._keys

    def run(self, inputs: bytes, evaluation_keys: bytes | None = None) -> bytes:
        """Run the circuit on serialized encrypted rows; return the serialized encrypted results.

        One circuit call per payload (a chunk of the model's ``batch_size`` rows), in parallel
        threads; the results keep the payloads' order and the inputs' meta (``n_rows``).

        Args:
            inputs: an inputs envelope made by the client.
            evaluation_keys: the client's evaluation keys, needed only when they are not cached
                yet (the inputs name their key id).
        """
        _check_size(inputs, self.limits["inputs"], "inputs")
        env = Envelope.from_bytes(inputs, kind="inputs", model_id=self.model_id, what="inputs")
        keys = None
        if evaluation_keys is not None:
            # Kept for this run even if other keys push them out of the cache meanwhile.
            key_id, keys = self._register_bytes(evaluation_keys)
            if key_id != env.key_id:
                raise EnvelopeError(
                    f"inputs were encrypted with key {env.key_id}, but the evaluation keys given "
                    f"are of key {key_id}"
                )
        return self.run_envelope(env, keys=keys)

    def cached_keys(self, key_id: str) -> Any:
        """The deserialized evaluation keys of ``key_id`` if cached, else ``None``."""
        with self._lock:
            return self._keys.get(key_id)

    def run_envelope(
        self,
        env: Envelope,
        *,
        keys: Any = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> bytes:
        """:meth:`run` on an inputs envelope already parsed (and so verified).

        Args:
            env: the inputs envelope (checked here to be inputs of this model).
            keys: deserialized evaluation keys of the envelope's key id (from
                :meth:`register_envelope`); ``None``: the cached ones.
            should_stop: asked before each circuit call (one per payload); when it answers
                ``True`` the calls not started yet are skipped and :class:`RunCancelledError` is
                raised (a call that has started runs to its end: Concrete cannot stop one).
        """
        if env.kind != "inputs" or env.model_id != self.model_id:
            raise EnvelopeError(f"not inputs of compiled model {self.model_id}")
        if keys is None:
            keys = self.cached_keys(env.key_id)
        if keys is None:
            raise EnvelopeError(
                f"no evaluation keys for key {env.key_id}: send them with the request first"
            )
        fhe = _fhe()
        try:
            values = [fhe.Value.deserialize(p) for p in env.payloads]
        except RuntimeError as exc:
            raise EnvelopeError(f"inputs cannot be deserialized: {exc}") from exc
        start = time.perf_counter()
        done = [0]

        def run_one(value: Any) -> bytes:
            if should_stop is not None and should_stop():
                raise RunCancelledError(f"stopped after {done[0]} of {len(values)} circuit call(s)")
            out = self._server.run(value, evaluation_keys=keys).serialize()
            with self._lock:
                self.calls_run += 1
                done[0] += 1
            return out

        def run_all() -> tuple[bytes, ...]:
            if len(values) > 1 and self.workers > 1:
                with ThreadPoolExecutor(max_workers=min(self.workers, len(values))) as pool:
                    return tuple(bytes(out) for out in pool.map(run_one, values))
            return tuple(bytes(run_one(v)) for v in values)

        try:
            # Concrete's run installs a native SIGINT handler that kills the process: the
            # command-line tool runs the whole command in a child process for that reason.
            outputs = call_interruptibly(run_all)
        except RuntimeError as exc:
            raise EnvelopeError(
                f"the circuit cannot run on these inputs (not ciphertexts of this model?): {exc}"
            ) from exc
        self.last_run_seconds = time.perf_counter() - start
        return Envelope("outputs", self.model_id, env.key_id, tuple(outputs), env.meta).to_bytes()


def _check_size(data: Any, limit: int, what: str) -> None:
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > limit:
        raise EnvelopeError(
            f"{what}: {len(data)} bytes, more than the {limit} this model's data can take"
        )
