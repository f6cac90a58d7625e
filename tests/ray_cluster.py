"""A real Ray cluster of several nodes on this machine, for tests (Ray's own
``ray.cluster_utils.Cluster``: a head and worker nodes, each a raylet with its own object store,
all on 127.0.0.1).

The test process is the cluster's driver. Ray reads its network setting when it is first
imported: :func:`local_cluster` sets it to the loopback interface before importing ray, and
refuses to run in a process that imported ray without it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fheqnn.serving.ray_backend import LOOPBACK_ENV

#: Object store of each node (MB): enough for the tiny models' keys, small for a 2-core machine.
OBJECT_STORE_MB = 120


@dataclass
class LocalCluster:
    """A running cluster: Ray's ``Cluster`` and its worker nodes (``remove`` one to kill it)."""

    cluster: Any
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The head's address (``127.0.0.1:PORT``)."""
        return str(self.cluster.address)

    def remove(self, node: Any) -> None:
        """Kill a worker node and its processes, as a machine that fails."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


def ray_env() -> dict[str, str]:
    """The environment a Ray process of the tests runs with (loopback only, no usage stats)."""
    return {LOOPBACK_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0"}


@contextmanager
def local_cluster(
    worker_nodes: int = 2,
    *,
    cpus_per_node: int = 1,
    head_cpus: int | None = None,
    object_store_mb: int = OBJECT_STORE_MB,
) -> Iterator[LocalCluster]:
    """Start a head and ``worker_nodes`` worker nodes, connect this process, and stop it all
    on exit. Each worker node carries a custom resource ``node<i>`` (1 unit) so that a test can
    place work on it; the head carries ``head``. ``head_cpus`` (default ``cpus_per_node``): 0
    keeps work that needs a CPU off the head, on the worker nodes."""
    if "ray" in sys.modules and os.environ.get(LOOPBACK_ENV) != "0":
        raise RuntimeError(f"ray was imported before {LOOPBACK_ENV}=0 was set")
    os.environ.update(ray_env())
    import ray
    from ray.cluster_utils import Cluster

    store = object_store_mb * 1024**2
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": cpus_per_node if head_cpus is None else head_cpus,
            "object_store_memory": store,
            "include_dashboard": False,
            "resources": {"head": 1},
        },
    )
    running = LocalCluster(cluster)
    try:
        for i in range(worker_nodes):
            running.workers.append(
                cluster.add_node(
                    num_cpus=cpus_per_node, object_store_memory=store, resources={f"node{i}": 1}
                )
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if addresses != {"127.0.0.1"}:
            raise RuntimeError(f"the test cluster listens on {addresses}, not only 127.0.0.1")
        yield running
    finally:
        if "ray.serve" in sys.modules:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def wait_for_replicas(url: str, replicas: int, timeout: float = 300.0) -> dict[str, Any]:
    """Until the service at ``url`` reports ``replicas`` replicas running and none in another
    state (its ``/health``); returns that health answer."""
    import httpx

    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            health = {}
        if health.get("replica_states") == {"RUNNING": replicas}:
            return health
        time.sleep(0.5)
    raise RuntimeError(f"{replicas} replicas not running after {timeout} s: {health}")
