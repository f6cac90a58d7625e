"""Scale-out on Ray: the service as Ray Serve replicas, and offline batches over Ray workers.

- :func:`deploy_service`: Ray Serve runs the app of :func:`~.app.create_app` as N replicas,
  each holding the compiled circuits and its own cache of deserialized keys. Evaluation keys
  reach every replica through the shared key store (a folder), never by a second upload.
- :func:`run_batch`: the rows of one ciphertext envelope are split over Ray tasks; the compiled
  server program and the evaluation keys are put once in Ray's object store, and each worker
  process keeps the deserialized circuit and keys for later tasks. The result is the same
  envelope as :meth:`FheModelServer.run` gives (rows are independent).

``init_ray("local")`` starts a private local instance on the loopback interface; any other
address joins that cluster. Ray reads its network setting once, when it is first imported, so
this module imports ray only inside its functions, after :func:`init_ray` has set it.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..runtime.artifacts import (
    MANIFEST,
    SERVER_FILES,
    ArtifactError,
    key_id_of,
    open_model_folder,
)
from ..runtime.envelope import Envelope, EnvelopeError
from .app import create_app
from .config import ServeConfig

logger = logging.getLogger(__name__)

APP_NAME = "fheqnn"
# Ray 2.60 on Linux binds the machine's network address unless this is "0" (then 127.0.0.1).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(
    address: str,
    *,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
) -> list[str]:
    """Start a local Ray instance (``"local"``, loopback only) or join a cluster by address.

    Args:
        address: ``"local"`` or a cluster address (``HOST:PORT``, ``ray://...``, ``auto``).
        num_cpus: CPUs a local instance may use (default: all).
        object_store_mb: object store size of a local instance (MB; default: Ray's).

    Returns:
        The addresses of the live nodes (a local instance: ``["127.0.0.1"]``).
    """
    if address == "local":
        if "ray" in sys.modules and os.environ.get(LOOPBACK_ENV) != "0":
            raise InvalidParameterError(
                f"ray was imported before a local instance could be set to bind 127.0.0.1: "
                f"set {LOOPBACK_ENV}=0 before importing ray"
            )
        os.environ[LOOPBACK_ENV] = "0"
    import ray

    if ray.is_initialized():
        return node_addresses()
    if address == "local":
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=None if object_store_mb is None else object_store_mb * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    nodes = node_addresses()
    logger.info("Ray nodes: %s", nodes)
    if address == "local" and set(nodes) != {"127.0.0.1"}:
        logger.warning("the local Ray instance listens on %s, not only 127.0.0.1", nodes)
    return nodes


def node_addresses() -> list[str]:
    """Addresses the live Ray nodes listen on."""
    import ray

    return [str(n["NodeManagerAddress"]) for n in ray.nodes() if n.get("Alive")]


def shutdown(*, serve_too: bool = True) -> None:
    """Stop Ray Serve (``serve_too``) and disconnect from Ray (stopping a local instance)."""
    if "ray" not in sys.modules:
        return
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            if serve_too:
                serve.shutdown()
        finally:
            ray.shutdown()


# ---------------------------------------------------------------------------- Ray Serve


class FheqnnReplica:
    """One replica of the service: builds the app (loads the circuits) on its Ray worker."""

    def __init__(self, config: ServeConfig) -> None:
        self._config = config

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._config)


def replica_deployment() -> Any:
    """The Ray Serve deployment of :class:`FheqnnReplica` (an ingress built on each replica)."""
    from ray import serve

    return serve.deployment(name="fheqnn")(serve.ingress()(FheqnnReplica))


def deploy_service(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replica_cpus: float = 1.0,
) -> tuple[str, ServeConfig]:
    """Deploy the app as ``config.replicas`` Ray Serve replicas behind Serve's HTTP proxy.

    Ray must be initialized (:func:`init_ray`). Without a key store, a temporary folder is
    made: replicas share keys through it (on a multi-machine cluster give a shared folder).

    Returns:
        The service URL and the configuration the replicas run.
    """
    if config.key_store is None:
        store = Path(tempfile.mkdtemp(prefix="fheqnn-keys-"))
        logger.warning(
            "no key store given: replicas share keys through %s (lost at exit; give "
            "--key-store a shared folder on a multi-machine cluster)",
            store,
        )
        config = replace(config, key_store=store)
    workers = config.workers or max(1, int(replica_cpus))
    config = replace(config, backend="ray", workers=workers)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    deployment = replica_deployment().options(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": replica_cpus},
    )
    serve.run(deployment.bind(config), name=APP_NAME, route_prefix="/", blocking=False)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}", config


# ---------------------------------------------------------------------------- offline batches

# Per Ray worker process: compiled servers by model id (loaded once, reused by later tasks).
_WORKER_SERVERS: dict[str, Any] = {}


def _worker_server(model_id: str, files: dict[str, bytes]) -> Any:
    from ..runtime.server import FheModelServer

    server = _WORKER_SERVERS.get(model_id)
    if server is None:
        folder = Path(tempfile.mkdtemp(prefix=f"fheqnn-{model_id[:8]}-"))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        # One circuit call per task at a time: Ray spreads the parallelism over tasks.
        server = FheModelServer(folder, workers=1)
        _WORKER_SERVERS[model_id] = server
    return server


def _run_rows(model_id: str, files: dict[str, bytes], keys: bytes, inputs: bytes) -> bytes:
    server = _worker_server(model_id, files)
    server.register_evaluation_keys(keys)  # cached after the first task: a hash check
    return bytes(server.run(inputs))


def run_batch(
    model_folder: str | Path,
    inputs: bytes,
    evaluation_keys: bytes,
    *,
    tasks: int | None = None,
) -> bytes:
    """Run a ciphertext batch over Ray workers; the same result envelope as a local run.

    Ray must be initialized (:func:`init_ray`). Labels are checked here before anything is
    shipped, so a ciphertext or keys of another model fail as they would locally.

    Args:
        model_folder: the compiled model (its server program is shipped to the workers).
        inputs: an inputs envelope of one or more ciphertexts (each a chunk of the model's
            ``batch_size`` rows).
        evaluation_keys: the client's evaluation-key envelope.
        tasks: how many Ray tasks to split the ciphertexts into (default: the cluster's CPUs).

    Raises:
        ArtifactError: the model folder is bad.
        EnvelopeError: inputs or keys are malformed or belong to another model or key.
    """
    import ray

    folder = open_model_folder(model_folder, need=SERVER_FILES)
    model_id = folder.model_id
    env = Envelope.from_bytes(inputs, kind="inputs", model_id=model_id, what="inputs")
    keys_env = Envelope.from_bytes(
        evaluation_keys,
        kind="evaluation_keys",
        model_id=model_id,
        key_id=env.key_id,
        what="evaluation keys",
    )
    if len(keys_env.payloads) != 1 or key_id_of(keys_env.payloads[0]) != keys_env.key_id:
        raise EnvelopeError(f"evaluation keys labelled {keys_env.key_id} do not hash to that id")
    if not env.payloads:
        return Envelope("outputs", model_id, env.key_id, (), env.meta).to_bytes()
    if tasks is None:
        tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
    tasks = max(1, min(int(tasks), len(env.payloads)))
    files = {name: folder.file(name).read_bytes() for name in (MANIFEST, *SERVER_FILES)}
    files_ref, keys_ref = ray.put(files), ray.put(evaluation_keys)
    bounds = [round(i * len(env.payloads) / tasks) for i in range(tasks + 1)]
    run_rows = ray.remote(_run_rows)
    futures = [
        run_rows.remote(
            model_id,
            files_ref,
            keys_ref,
            Envelope("inputs", model_id, env.key_id, env.payloads[a:b], env.meta).to_bytes(),
        )
        for a, b in itertools.pairwise(bounds)
    ]
    outputs: list[bytes] = []
    for blob in ray.get(futures):
        part = Envelope.from_bytes(blob, kind="outputs", model_id=model_id, key_id=env.key_id)
        outputs.extend(part.payloads)
    if len(outputs) != len(env.payloads):
        raise ArtifactError(
            f"Ray returned {len(outputs)} results for {len(env.payloads)} ciphertexts"
        )
    return Envelope("outputs", model_id, env.key_id, tuple(outputs), env.meta).to_bytes()
