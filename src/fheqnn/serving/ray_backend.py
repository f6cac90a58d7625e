"""Scale-out on Ray: the service as Ray Serve replicas, and offline batches over Ray workers.

- :func:`deploy_service` (and :func:`build_app`, for Serve config files): Ray Serve runs the
  app of :func:`~.app.create_app` as N replicas (or between autoscaling bounds). The compiled
  models travel in the deployment's arguments and evaluation keys through the cluster's key
  registry (:mod:`.ray_keys`): replicas on any node need no shared folder, and a key uploaded
  to one replica is never uploaded again.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..runtime.artifacts import MANIFEST, REQUIRED_FILES, open_model_folder
from .app import create_app
from .config import ServeConfig
from .ray_batch import run_batch  # noqa: F401 (re-exported: it used to live here)
from .ray_keys import DEFAULT_MAX_KEYS, start_registry, stop_registry
from .shipped_models import pack, unpack

logger = logging.getLogger(__name__)

APP_NAME = "fheqnn"

#: Ray Serve's controller kills an HTTP proxy that is not ready within this many seconds
#: (Serve's default, 5 s), while ``serve.start`` waits 60 s for it: on a busy machine the proxy
#: was killed before it started and ``serve.start`` failed with ``ActorDiedError``. The
#: controller fheqnn starts gets 60 s too, unless the environment says otherwise.
PROXY_READY_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
PROXY_READY_SECONDS = "60"

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


def stop_service() -> None:
    """Remove this service from the cluster it joined (its application and its key registry;
    the registry's folder stays), leaving Ray Serve and other applications running, then
    disconnect."""
    if "ray" not in sys.modules:
        return
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.delete(APP_NAME)
            stop_registry()
        finally:
            ray.shutdown()


# ---------------------------------------------------------------------------- Ray Serve

#: What a replica needs of a compiled model folder: shipped with the deployment.
SHIPPED_FILES = (MANIFEST, *REQUIRED_FILES)


def pack_models(folders: tuple[Path, ...]) -> list[dict[str, Any]]:
    """The compiled model folders as plain data (:func:`.shipped_models.pack`), verified here
    first: replicas on other nodes get them with the deployment, not from a shared disk."""
    return [pack(open_model_folder(path), SHIPPED_FILES) for path in folders]


class FheqnnReplica:
    """One replica of the service: unpacks the shipped models on its node
    (:func:`.shipped_models.unpack`) and builds the app on its Ray worker (keys come from the
    cluster's registry). Without a configured number of workers, it runs as many encrypted
    runs at once as Ray gave it CPUs."""

    def __init__(self, config: ServeConfig, packed: list[dict[str, Any]]) -> None:
        folders = tuple(unpack(model) for model in packed)
        workers = config.workers or _assigned_cpus()
        self._config = replace(config, model_folders=folders, workers=workers)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._config)


def _assigned_cpus() -> int:
    """The CPUs Ray assigned to this actor (at least 1)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def replica_deployment() -> Any:
    """The Ray Serve deployment of :class:`FheqnnReplica` (an ingress built on each replica)."""
    from ray import serve

    return serve.deployment(name="fheqnn")(serve.ingress()(FheqnnReplica))


def application(
    config: ServeConfig, *, max_keys: int = DEFAULT_MAX_KEYS, options: dict[str, Any] | None = None
) -> Any:
    """The Serve application of ``config``: the key registry started (``config.key_store``, if
    any, is its folder on the head node), the models packed into the deployment's arguments
    (``options``: the deployment's, e.g. ``num_replicas``)."""
    start_registry(config.key_store, max_keys=max_keys)
    packed = pack_models(config.model_folders)
    config = replace(config, backend="ray", key_registry=True, key_store=None)
    return replica_deployment().options(**(options or {})).bind(config, packed)


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder, for ``serve run`` / ``serve deploy`` config files
    (``import_path: fheqnn.serving.ray_backend:build_app``; an example is
    ``examples/ray-serve.yaml``).

    ``args``: ``models`` (compiled model folders, readable where the application is built),
    and optionally ``key_store`` (the registry's folder, on the head node), ``token_env`` (the
    environment variable holding the bearer token), ``max_request_mb``, ``max_request_rows``,
    ``max_uploads``, ``upload_seconds``, ``max_cached_keys``, ``workers``, ``max_keys`` (key
    sets the registry keeps in the object store). Replicas, autoscaling and resources are the
    deployment's own settings in the same file (deployment name ``fheqnn``).
    """
    config, max_keys = config_from_args(args)
    return application(config, max_keys=max_keys)


#: ``build_app`` arguments that are :class:`ServeConfig` fields of the same name.
_CONFIG_ARGS = (
    "key_store",
    "max_request_mb",
    "max_request_rows",
    "max_uploads",
    "upload_seconds",
    "max_cached_keys",
    "workers",
)


def config_from_args(args: dict[str, Any]) -> tuple[ServeConfig, int]:
    """The service configuration and the registry's ``max_keys`` from a Serve config file's
    ``args`` (see :func:`build_app`), checked: models are a list, no unknown key, the token
    read from its environment variable, every limit validated by :class:`ServeConfig`."""
    if not isinstance(args, dict):
        raise InvalidParameterError(f"args: expected a mapping, got {type(args).__name__}")
    args = dict(args)
    models = args.pop("models", None)
    if not isinstance(models, list | tuple) or not models:
        raise InvalidParameterError("args.models: give a list of compiled model folders")
    # The application may be built on another machine than the one the file was written on
    # (`serve deploy` builds it on the cluster): a relative path would be relative to where.
    for name, value in [*(("models", m) for m in models), ("key_store", args.get("key_store"))]:
        if value is None and name == "key_store":
            continue
        if not isinstance(value, str) or not Path(value).is_absolute():
            raise InvalidParameterError(
                f"args.{name}: give absolute folder paths (the application is built where Ray "
                f"runs the builder), got {value!r}"
            )
    token_env = args.pop("token_env", None)
    token = None
    if token_env is not None:
        token = os.environ.get(str(token_env))
        if not token:
            raise InvalidParameterError(f"args.token_env: {token_env} is not set or empty")
    max_keys = args.pop("max_keys", DEFAULT_MAX_KEYS)
    if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
        raise InvalidParameterError(f"args.max_keys: a positive integer, got {max_keys!r}")
    if unknown := sorted(set(args) - set(_CONFIG_ARGS)):
        known = sorted({"models", "token_env", "max_keys", *_CONFIG_ARGS})
        raise InvalidParameterError(f"unknown args {unknown}; known: {known}")
    config = ServeConfig(model_folders=tuple(models), token=token, backend="ray", **args)
    return config, max_keys


def proxy_ready_seconds() -> str:
    """The proxy start-up wait the controller gets: ``PROXY_READY_ENV`` if set, else
    ``PROXY_READY_SECONDS``. Checked here: the controller would fail on a bad value inside its
    own process, and ``serve.start`` would report only that an actor died.

    Raises:
        InvalidParameterError: the variable is not a positive number of seconds.
    """
    value = os.environ.get(PROXY_READY_ENV, PROXY_READY_SECONDS)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidParameterError(
            f"{PROXY_READY_ENV}={value!r}: must be a positive number of seconds"
        )
    return value


def deploy_service(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replica_cpus: float = 1.0,
    autoscale: tuple[int, int] | None = None,
) -> tuple[str, ServeConfig]:
    """Deploy the app as ``config.replicas`` Ray Serve replicas behind Serve's HTTP proxy
    (``autoscale``: between ``(min, max)`` replicas instead, by requests in flight).

    Ray must be initialized (:func:`init_ray`). Models travel with the deployment and keys
    through the cluster's registry: no folder needs to be shared between nodes.

    Returns:
        The service URL and the configuration the replicas run.
    """
    workers = config.workers or max(1, int(replica_cpus))
    config = replace(config, backend="ray", workers=workers)
    from ray import serve

    ready = proxy_ready_seconds()
    serve.start(
        http_options={"host": host, "port": port},
        controller_options={"runtime_env": {"env_vars": {PROXY_READY_ENV: ready}}},
    )
    if APP_NAME in serve.status().applications:
        # Deploying would replace it, and stopping this one would remove it with its keys.
        raise InvalidParameterError(
            f"a Ray Serve application named {APP_NAME!r} already runs on this cluster: stop it "
            f"first (`serve delete {APP_NAME}`, or stop the fheqnn serve that started it)"
        )
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": replica_cpus}}
    if autoscale is None:
        options["num_replicas"] = config.replicas
    else:
        low, high = autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            "target_ongoing_requests": config.workers,
        }
    serve.run(application(config, options=options), name=APP_NAME, route_prefix="/", blocking=False)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}", config


def cluster_status() -> dict[str, Any]:
    """What ``GET /health`` of a replica says of the cluster: live nodes, the replicas of the
    service by state (``RUNNING``, ``STARTING``, ...), and the node of the replica answering."""
    import ray
    from ray import serve

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    states: dict[str, int] = {}
    try:
        app = serve.status().applications[APP_NAME]
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                states[str(getattr(state, "value", state))] = count
    except (KeyError, AttributeError) as exc:  # pragma: no cover - Serve's status changed
        logger.info("no Serve status: %s", exc)
    node = ray.get_runtime_context().get_node_id()
    return {"nodes": nodes, "replica_states": states, "node_id": str(node)}
