"""Evaluation keys shared by every replica of a Ray cluster, without a shared disk.

A key uploaded to one replica must answer predicts served by any replica on any node. The
:class:`KeyRegistry` is one named Ray actor of the cluster (pinned to the head node, which lives
as long as the cluster): each envelope it receives is put in Ray's object store by the actor
itself, so the actor owns it and it outlives the replica that uploaded it; replicas read it
back from the object store, which moves it between nodes. With a folder (``serve --key-store``,
a folder on the head node) every envelope is also written there, and read back after a restart
of the registry or of the cluster. Without one, the registry holds at most ``max_keys``
envelopes (least recently used dropped; their clients re-upload on the 404).

:class:`RayKeyStore` gives a replica the interface of :class:`~.keystore.KeyStore`
(``has``/``put``/``get``/``key_ids``), so the service does not know which one it has. Every
envelope read back is checked against its model id and key id, as the folder store does.

Ray is imported only inside functions: the module can be imported where Ray is not set up.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..runtime.artifacts import check_keys_id
from ..runtime.envelope import Envelope, EnvelopeError
from .keystore import KeyStore, is_id

logger = logging.getLogger(__name__)

#: The registry's actor name and Ray namespace (one registry per cluster).
REGISTRY_NAME = "fheqnn-keys"
NAMESPACE = "fheqnn"
#: Envelopes the registry keeps in the object store (each is megabytes to hundreds of MB).
DEFAULT_MAX_KEYS = 32
#: Calls the registry answers at once (threads of the actor).
CONCURRENT_CALLS = 8
#: The resource only the head node has (Ray 2.x): where the registry is placed.
HEAD_RESOURCE = "node:__internal_head__"


class KeyRegistry:
    """The cluster's evaluation keys by (model id, key id): a Ray actor (see the module).

    Args:
        folder: where envelopes are also written (on the registry's node), or ``None``.
        max_keys: envelopes kept in the object store (least recently used dropped first).
    """

    def __init__(self, folder: str | None, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        # The actor answers several calls at once (a large upload being checked must not hold
        # up every replica's reads): its table is guarded by a lock.
        self._lock = threading.Lock()
        self._refs: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._max_keys = max(1, int(max_keys))
        self._folder = folder
        self._disk = None if folder is None else KeyStore(folder)

    def settings(self) -> tuple[str | None, int]:
        """The folder and ``max_keys`` it was started with."""
        return self._folder, self._max_keys

    def has(self, model_id: str, key_id: str) -> bool:
        """Whether keys of this id are known for this model."""
        with self._lock:
            if (model_id, key_id) in self._refs:
                return True
        return self._disk is not None and self._disk.has(model_id, key_id)

    def put(self, model_id: str, key_id: str, envelope: bytes) -> bool:
        """Keep an evaluation-key envelope (checked by the replica, checked again here);
        returns whether it was new."""
        _check(envelope, model_id, key_id)
        new = not self.has(model_id, key_id)
        # Put again even if known: the client uploads after a 404, which a reference whose
        # object was lost would otherwise repeat.
        self._hold(model_id, key_id, envelope, replace=True)
        if self._disk is not None:
            self._disk.put(model_id, key_id, envelope)
        if new:
            logger.info("registered evaluation keys %s of model %s", key_id, model_id)
        return new

    def get(self, model_id: str, key_id: str) -> list[Any] | None:
        """``[object ref]`` of the envelope (a list, so that Ray hands over the reference,
        not the bytes), or ``None`` if unknown."""
        with self._lock:
            ref = self._refs.get((model_id, key_id))
            if ref is not None:
                self._refs.move_to_end((model_id, key_id))
        if ref is None and self._disk is not None:
            blob = self._disk.get(model_id, key_id)  # checked by the folder store
            if blob is not None:
                ref = self._hold(model_id, key_id, blob)
        return None if ref is None else [ref]

    def key_ids(self, model_id: str) -> list[str]:
        """Ids of the keys known for a model."""
        with self._lock:
            held = {k for m, k in self._refs if m == model_id}
        if self._disk is not None:
            held.update(self._disk.key_ids(model_id))
        return sorted(held)

    def _hold(self, model_id: str, key_id: str, envelope: bytes, *, replace: bool = False) -> Any:
        import ray

        with self._lock:
            ref = None if replace else self._refs.get((model_id, key_id))
        if ref is None:
            ref = ray.put(envelope)  # owned by this actor: outlives the uploading replica
        with self._lock:
            self._refs[(model_id, key_id)] = ref
            self._refs.move_to_end((model_id, key_id))
            while len(self._refs) > self._max_keys:
                (model, key), _ = self._refs.popitem(last=False)
                logger.info("dropped evaluation keys %s of model %s from memory", key, model)
        return ref


def _check(envelope: bytes, model_id: str, key_id: str) -> None:
    """An evaluation-key envelope of this model and key id, whose keys hash to that id."""
    if not (is_id(model_id) and is_id(key_id)):
        raise EnvelopeError(f"malformed model or key id: {model_id!r}, {key_id!r}")
    env = Envelope.from_bytes(
        envelope, kind="evaluation_keys", model_id=model_id, key_id=key_id, what="evaluation keys"
    )
    check_keys_id(env)


def start_registry(folder: str | Path | None, *, max_keys: int = DEFAULT_MAX_KEYS) -> Any:
    """The cluster's registry: started on the head node if it is not running (detached, so that
    it outlives the process that started it; restarted by Ray if its process dies).

    Ray must be initialized. Returns its actor handle.
    """
    import ray

    folder = None if folder is None else str(Path(folder).resolve())
    try:
        running = ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        running = None
    if running is not None and ray.get(running.settings.remote()) != (folder, max_keys):
        # Another deployment's registry (other folder): replaced, so that keys go where this
        # service was told to keep them. Keys only it held in memory are uploaded again.
        logger.warning("replacing the cluster's key registry: it kept keys elsewhere")
        ray.kill(running, no_restart=True)
        _wait_gone()
    actor = ray.remote(KeyRegistry).options(
        name=REGISTRY_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources={HEAD_RESOURCE: 0.001},
        max_restarts=-1,
        max_task_retries=3,
        max_concurrency=CONCURRENT_CALLS,
    )
    handle = actor.remote(folder, max_keys)
    ray.get(handle.key_ids.remote("0" * 32))  # started and answering
    return handle


def _wait_gone(seconds: float = 30.0) -> None:
    """Until the registry's name is free again (a killed actor's name is released
    asynchronously)."""
    import time

    import ray

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)


def stop_registry() -> None:
    """Kill the cluster's registry, if running (its keys in memory are gone; a folder stays)."""
    import ray

    try:
        handle = ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        return
    ray.kill(handle, no_restart=True)


class RayKeyStore:
    """A replica's view of the :class:`KeyRegistry`, with the interface of
    :class:`~.keystore.KeyStore`. The registry is looked up by name on first use."""

    def __init__(self) -> None:
        self._handle: Any = None

    @property
    def root(self) -> None:
        """No folder on this machine (the registry's folder, if any, is on the head node)."""
        return None

    def _registry(self) -> Any:
        if self._handle is None:
            import ray

            self._handle = ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        return self._handle

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self._registry(), method).remote(*args))
        except ray.exceptions.RayActorError:
            # The registry was replaced (another folder) or removed and started again: look
            # it up by name once more.
            self._handle = None
            return ray.get(getattr(self._registry(), method).remote(*args))

    def has(self, model_id: str, key_id: str) -> bool:
        """Whether the registry knows keys of this id for this model."""
        return bool(self._call("has", model_id, key_id))

    def put(self, model_id: str, key_id: str, envelope: bytes | Path) -> bool:
        """Give the registry an envelope already checked by the caller; whether it was new."""
        if isinstance(envelope, Path):
            envelope = envelope.read_bytes()
        return bool(self._call("put", model_id, key_id, envelope))

    def get(self, model_id: str, key_id: str) -> bytes | None:
        """The envelope from the object store (checked against its ids), or ``None``."""
        import ray

        blob = None
        for _ in range(2):
            refs = self._call("get", model_id, key_id)
            if refs is None:
                return None
            try:
                blob = ray.get(refs[0])
                break
            except ray.exceptions.RayError as exc:
                # The registry restarted after giving this reference (its objects died with
                # its process): ask again, it reloads from its folder or says it lost them.
                logger.warning("evaluation keys %s lost in the object store: %s", key_id, exc)
        if blob is None:
            return None
        try:
            _check(blob, model_id, key_id)
        except EnvelopeError as exc:
            logger.warning("ignoring evaluation keys the registry gave: %s", exc)
            return None
        return blob

    def key_ids(self, model_id: str) -> list[str]:
        """Ids of the keys the registry knows for a model."""
        return list(self._call("key_ids", model_id))
