"""Serving benchmark (by hand, not in CI): encrypted requests over HTTP, local vs Ray Serve.

For 1, 2, 4 and 8 concurrent clients (one row per request): requests/s and p50 / p95 latency,
on the local backend (uvicorn, one process) and on Ray Serve with 1 and 2 replicas; plus the
HTTP overhead per request against the in-process server. Traffic goes to 127.0.0.1 only.

    PYTHONPATH=src python benchmarks/serving.py                # breast cancer at the defaults
    PYTHONPATH=src python benchmarks/serving.py --quick        # tiny settings, a smoke run
    PYTHONPATH=src python benchmarks/serving.py --cluster      # replicas x nodes on Ray

Writes ``benchmarks/results/serving.jsonl`` (one JSON object per measurement) and
``benchmarks/results/serving.md``; ``--cluster`` (``serving_cluster.py``) writes its own
section of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fheqnn import FheModelClient, FheModelServer, NeuralNetClassifier
from fheqnn.datasets import load_split
from fheqnn.serving.client import HttpClient

RESULTS = Path(__file__).parent / "results"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build(workdir: Path, quick: bool) -> tuple[Path, Path, np.ndarray]:
    """Train and compile breast cancer at the defaults (quick: few epochs), keygen."""
    x_tr, x_te, y_tr, _ = load_split("breast_cancer")
    est = NeuralNetClassifier(max_epochs=5 if quick else 200, verbose=0, random_state=0)
    est.fit(x_tr, y_tr).compile(x_tr)
    model, keys = workdir / "model", workdir / "keys"
    est.fhe_model_.save(model)
    FheModelClient(model).keygen(keys)
    return model, keys, x_te


def start_server(
    model: Path, store: Path, ray_replicas: int | None
) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "fheqnn.cli", "serve", str(model), "--key-store", str(store)]
    args += ["--port", str(free_port())]
    if ray_replicas:
        args += [
            "--ray",
            "local",
            "--replicas",
            str(ray_replicas),
            "--ray-cpus",
            str(os.cpu_count()),
        ]
        args += ["--replica-cpus", str(os.cpu_count() / ray_replicas)]
    env = {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    for line in proc.stdout:
        if " at http://" in line:
            return proc, line.split(" at ")[1].split()[0]
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    proc.wait(timeout=120)


def measure(url: str, client: FheModelClient, x: np.ndarray, clients: int, per_client: int) -> dict:
    with HttpClient(url, retries=5) as http:
        http.ensure_keys(client)
    blobs = [client.encrypt(x[i % len(x)][None, :]) for i in range(clients * per_client)]

    def one_client(c: int) -> list[tuple[float, float]]:
        out = []
        with HttpClient(url, retries=5) as http:
            for blob in blobs[c * per_client : (c + 1) * per_client]:
                t0 = time.perf_counter()
                http.run(client.model_id, client.key_info.key_id, blob)
                out.append((time.perf_counter() - t0, http.last_run_seconds))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        samples = [s for part in pool.map(one_client, range(clients)) for s in part]
    wall = time.perf_counter() - start
    latency = np.array([s[0] for s in samples])
    run = np.array([s[1] for s in samples])
    return {
        "clients": clients,
        "requests": len(samples),
        "requests_per_s": len(samples) / wall,
        "p50_s": float(np.percentile(latency, 50)),
        "p95_s": float(np.percentile(latency, 95)),
        "server_run_p50_s": float(np.percentile(run, 50)),
    }


def in_process(model: Path, client: FheModelClient, x: np.ndarray, n: int) -> float:
    server = FheModelServer(model, workers=1)
    server.register_evaluation_keys(client.evaluation_keys())
    times = []
    for i in range(n):
        blob = client.encrypt(x[i % len(x)][None, :])
        t0 = time.perf_counter()
        server.run(blob)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs, fewer requests")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--per-client", type=int, default=None, help="requests per client")
    parser.add_argument("--backends", nargs="+", default=["local", "ray1", "ray2"])
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="rows/s with 1, 2, 4 replicas over 1 and 2 Ray nodes (serving_cluster.py)",
    )
    args = parser.parse_args()
    if args.cluster:
        from serving_cluster import run_cluster

        run_cluster(args.quick, args.per_client)
        return
    per_client = args.per_client or (2 if args.quick else 5)
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, keys, x = build(work, args.quick)
        client = FheModelClient(model, keys)
        base = in_process(model, client, x, 3 if args.quick else 10)
        print(f"in-process run: {base:.3f} s per row", flush=True)
        for backend in args.backends:
            replicas = {"local": None, "ray1": 1, "ray2": 2}[backend]
            proc, url = start_server(model, work / f"store-{backend}", replicas)
            try:
                for clients in args.clients:
                    row = measure(url, client, x, clients, per_client)
                    row.update(
                        backend=backend,
                        in_process_run_s=base,
                        quick=args.quick,
                        cpus=os.cpu_count(),
                    )
                    # One client at a time: the request's extra cost over the in-process run.
                    row["http_overhead_s"] = row["p50_s"] - base if clients == 1 else None
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop(proc)
    with open(RESULTS / "serving.jsonl", "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    lines = [
        f"Encrypted serving, breast cancer at the defaults ({os.cpu_count()} CPUs"
        f"{', quick settings' if args.quick else ''}); in-process run {base:.3f} s/row.",
        "",
        "| backend | clients | req/s | p50 (s) | p95 (s) | server run p50 (s) | HTTP overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = (
            f"{r['http_overhead_s'] * 1000:.0f} ms ({r['http_overhead_s'] / base * 100:.1f} %)"
            if r["http_overhead_s"] is not None
            else ""
        )
        lines.append(
            f"| {r['backend']} | {r['clients']} | {r['requests_per_s']:.2f} | {r['p50_s']:.3f} "
            f"| {r['p95_s']:.3f} | {r['server_run_p50_s']:.3f} | {overhead} |"
        )
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
