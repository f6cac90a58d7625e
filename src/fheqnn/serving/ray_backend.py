"""Scale-out on Ray: the service as Ray Serve replicas, and offline batches over Ray workers.

- :func:`deploy_service`: Ray Serve runs the app of :func:`~.app.create_app` as N replicas,
  each holding the compiled circuits and its own cache of deserialized keys. Evaluation keys
  reach every replica through the shared key store (a folder), never by a second upload.
- Offline batches over Ray tasks (:func:`run_batch`, and the resumable ``predict --ray`` jobs)
  are in :mod:`.ray_batch`; ``run_batch`` is importable from here too.

``init_ray("local")`` starts a private local instance on the loopback interface; any other
address joins that cluster. Ray reads its network setting once, when it is first imported, so
this module imports ray only inside its functions, after :func:`init_ray` has set it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from .app import create_app
from .config import ServeConfig
from .ray_batch import run_batch  # noqa: F401 (re-exported: it used to live here)

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
