"""Serving on a Ray cluster (by hand, not in CI): rows/s with 1, 2 and 4 replicas over 1 and 2
nodes, the core-seconds a row costs, and the overhead Ray adds per request over the local
backend, all in one run. Run through ``benchmarks/serving.py --cluster``.

The nodes are Ray's own test cluster (``tests/ray_cluster.py``: a head without CPUs, for Ray's
controller, Serve's controller and the key registry, and worker nodes of 2 logical CPUs each, all
on 127.0.0.1 and all sharing this machine's cores): on one machine it shows Ray's overhead, not
a speed-up. Each configuration is deployed afresh (models shipped, keys through the registry)
and measured with one client (latency) and with four (throughput), one row per request.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from fheqnn import FheModelClient
from fheqnn.serving.config import ServeConfig
from serving import RESULTS, build, free_port, in_process, measure, start_server, stop

TESTS = Path(__file__).resolve().parents[1] / "tests"
#: Logical CPUs of each worker node (they share the machine's cores).
NODE_CPUS = 2
#: Concurrent clients of the throughput measurement.
CLIENTS = 4
BEGIN, END = "<!-- cluster: begin -->", "<!-- cluster: end -->"


def _measure_cluster(
    model: Path, client: FheModelClient, x: np.ndarray, per_client: int
) -> list[dict]:
    sys.path.insert(0, str(TESTS))
    from fheqnn.serving import ray_backend
    from ray_cluster import local_cluster, wait_for_replicas

    rows = []
    for nodes in (1, 2):
        with local_cluster(
            worker_nodes=nodes, cpus_per_node=NODE_CPUS, head_cpus=0, object_store_mb=400
        ):
            from ray import serve

            port = free_port()
            for replicas in (1, 2, 4):
                cpus = min(NODE_CPUS, nodes * NODE_CPUS / replicas)  # a replica fits a node
                config = ServeConfig((model,), replicas=replicas, workers=max(1, round(cpus)))
                url, _ = ray_backend.deploy_service(config, port=port, replica_cpus=cpus)
                wait_for_replicas(url, replicas)
                one = measure(url, client, x, 1, 2 * per_client)
                many = measure(url, client, x, CLIENTS, per_client)
                row = {"mode": "cluster", "nodes": nodes, "replicas": replicas}
                row.update(replica_cpus=cpus, one=one, many=many)
                rows.append(row)
                print(json.dumps(row), flush=True)
                serve.delete(ray_backend.APP_NAME)
    return rows


def run_cluster(quick: bool, per_client: int | None) -> None:
    """Measure, append the rows to ``serving.jsonl`` and write the cluster section of
    ``serving.md``."""
    per_client = per_client or (2 if quick else 4)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, keys, x = build(work, quick)
        client = FheModelClient(model, keys)
        base = in_process(model, client, x, 3 if quick else 10)
        print(f"in-process run: {base:.3f} s per row", flush=True)
        proc, url = start_server(model, work / "store-local", None)
        try:
            local = {
                "mode": "cluster-baseline",
                "one": measure(url, client, x, 1, 2 * per_client),
                "many": measure(url, client, x, CLIENTS, per_client),
            }
        finally:
            stop(proc)
        print(json.dumps(local), flush=True)
        rows = _measure_cluster(model, client, x, per_client)
    meta = {"in_process_run_s": base, "cores": cores, "quick": quick, "load": os.getloadavg()[0]}
    with open(RESULTS / "serving.jsonl", "a") as handle:
        for row in [local, *rows]:
            handle.write(json.dumps({**row, **meta}) + "\n")
    section = _section(base, cores, local, rows, quick)
    path = RESULTS / "serving.md"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)


def _section(base: float, cores: int, local: dict, rows: list[dict], quick: bool) -> str:
    """The Markdown section: the table and the model of rows/s for N machines of K cores.

    What Ray adds to a request is measured against that request's own run: request p50 minus
    the replica's run p50 (one client), less the same difference on the local backend. The
    difference of the two p50s alone would also count that a replica of 1 CPU runs a row on
    one core (Concrete parallelizes a row over the cores it is given)."""
    local_one, local_rate = local["one"], local["many"]["requests_per_s"]
    local_extra = local_one["p50_s"] - local_one["server_run_p50_s"]
    core_s = cores / local_rate  # core-seconds per row, the machine saturated
    lines = [
        BEGIN,
        "## On a Ray cluster: replicas x nodes (issue 27)",
        "",
        f"Breast cancer at the defaults{', quick settings' if quick else ''}; in-process run "
        f"{base:.3f} s per row; {cores} cores shared by every node. Local backend in the same "
        f"run: one client p50 {local_one['p50_s']:.3f} s (request beyond its run: "
        f"{local_extra * 1000:.0f} ms), {CLIENTS} clients {local_rate:.2f} rows/s.",
        "",
        f"| nodes | replicas | CPUs each | 1 client p50 (s) | its run p50 (s) | Ray adds per "
        f"request | {CLIENTS} clients rows/s | core-s per row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shares, costs = [], []
    for r in rows:
        one, many = r["one"], r["many"]
        added = one["p50_s"] - one["server_run_p50_s"] - local_extra
        shares.append(added / one["server_run_p50_s"])
        costs.append(cores / many["requests_per_s"])
        lines.append(
            f"| {r['nodes']} | {r['replicas']} | {r['replica_cpus']:g} | {one['p50_s']:.3f} "
            f"| {one['server_run_p50_s']:.3f} | {added * 1000:+.0f} ms "
            f"({shares[-1] * 100:+.1f} % of the run) | {many['requests_per_s']:.2f} "
            f"| {costs[-1]:.2f} |"
        )
    lines += [
        "",
        "Measured by `PYTHONPATH=src python benchmarks/serving.py --cluster` (one row per "
        "request; each configuration deployed afresh; keys uploaded once per cluster).",
        "",
        f"Model. A row costs c = {core_s:.2f} core-seconds on the local backend with this "
        f"machine saturated ({cores} cores / {local_rate:.2f} rows/s), {min(costs):.2f}-"
        f"{max(costs):.2f} through Ray (the Ray nodes share these cores with Ray's own "
        f"processes). Ray adds {min(shares) * 100:.1f} to {max(shares) * 100:.1f} % of a "
        "row's run per request. For N machines of K cores behind Ray Serve: rows/s = N x K / c, "
        f"about {1 / core_s:.2f} x N x K for this model. A replica per machine with all its "
        "cores gives the lowest latency (a row runs on all of them); a replica per core gives "
        "the same throughput and a row that takes K times longer. Assumptions: rows are "
        "independent (nothing is shared but the keys, read once per replica from the "
        "registry); the network carries ciphertexts (tens of KB per row) and keys once per "
        "replica, never the bottleneck; the head node's controllers and registry are idle "
        "between uploads; cores are physical (a hyperthread adds little to TFHE's FFTs). On "
        "one machine the table shows overhead only: every configuration shares the same "
        f"{cores} cores.",
        END,
    ]
    return "\n".join(lines)
