"""Upload memory benchmark (by hand, not in CI): the server's peak RSS under concurrent
maximum-size request bodies.

Compiles a tiny model (seconds), starts ``fheqnn serve`` on 127.0.0.1 in a subprocess, uploads
one real evaluation-key envelope, then sends ``--uploads`` request bodies of ``--body-mb`` MB at
once (default: exactly the server's limit): envelopes of evaluation keys with a wrong checksum
(the read path and the refusal, as a careless or hostile client could send them): half are
evaluation keys to ``POST /keys``, half ciphertexts to ``POST /models/{id}/predict`` (whose
size limit, 100 000 rows, lets the body be read to the end and its checksum computed). The
peak is the kernel's own high-water mark of resident memory (``VmHWM`` in
``/proc/PID/status``) of the server and its child processes (``serve`` runs the service in a
forked child): no sampling, nothing missed.

    PYTHONPATH=src python benchmarks/upload_memory.py                      # 8 x 256 MB
    PYTHONPATH=src python benchmarks/upload_memory.py --uploads 2 --body-mb 50   # a smoke run

Prints one JSON object (peak and start-up RSS in MB, the statuses the uploads got).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from fheqnn import FheModelClient, NeuralNetClassifier, keep_exit_status
from fheqnn.runtime.envelope import MAGIC

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHUNK = 1 << 20


def build(workdir: Path) -> tuple[Path, Path]:
    """A tiny network (4 features, 2-bit) compiled with the fast settings, and its keys."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    x = rng.normal(scale=2.0, size=(3, 4))[y] + rng.normal(scale=0.6, size=(90, 4))
    est = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=1,
        module__n_w_bits=2,
        module__n_a_bits=2,
        module__n_accum_bits=5,
        max_epochs=5,
        verbose=0,
        random_state=0,
    ).fit(x, y)
    est.compile(x, rounding="off", p_error=None)
    model, keys = workdir / "model", workdir / "keys"
    est.fhe_model_.save(model)
    FheModelClient(model).keygen(keys)
    return model, keys


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    """``fheqnn serve MODEL --port 0 EXTRA`` on 127.0.0.1; its URL and what it printed."""
    args = [sys.executable, "-m", "fheqnn.cli", "serve", str(model), "--port", "0", *extra]
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if " at http://" in line:
            return proc, line.split(" at ")[1].split()[0], lines
    raise RuntimeError(f"server did not start: {lines}")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def status_mb(pid: int, field: str) -> float:
    """A ``kB`` field of ``/proc/PID/status`` in MB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1000
    except OSError:
        pass
    return 0.0


def bad_body(kind: str, model_id: str, size: int) -> Iterator[bytes]:
    """``size`` bytes of an envelope of ``kind`` whose checksum is wrong, in chunks."""
    labels = {"count": 1, "key_id": "0" * 32, "kind": kind, "meta": {}, "model_id": model_id}
    header = json.dumps(labels).encode()
    head = MAGIC + b"\0" * 32 + struct.pack(">I", len(header)) + header
    head += struct.pack(">Q", size - len(head) - 8)
    yield head
    left = size - len(head)
    block = b"\x5a" * CHUNK
    while left > 0:
        yield block[: min(left, CHUNK)]
        left -= CHUNK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=8, help="bodies sent at once (default 8)")
    parser.add_argument("--body-mb", type=float, default=256.0, help="size of each (MB, 10**6)")
    parser.add_argument(
        "--server-args",
        default="--max-request-mb 256",
        help="extra 'fheqnn serve' options (default: '--max-request-mb 256', the old default)",
    )
    args = parser.parse_args()
    size = int(args.body_mb * 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        model, keys = build(Path(tmp))
        client = FheModelClient(model, keys)
        proc, url, printed = start_server(model, args.server_args.split())
        try:
            tree = descendants(proc.pid)
            start_rss = max(status_mb(p, "VmRSS") for p in tree)
            real = httpx.post(f"{url}/keys", content=client.evaluation_keys(), timeout=600)

            def upload(i: int) -> int:
                headers = {"Content-Length": str(size), "X-Key-Id": "0" * 32}
                kind, path = "evaluation_keys", "/keys"
                if i % 2:
                    kind, path = "inputs", f"/models/{client.model_id}/predict"
                try:
                    response = httpx.post(
                        url + path,
                        content=bad_body(kind, client.model_id, size),
                        headers=headers,
                        timeout=600,
                    )
                except httpx.HTTPError as exc:
                    return -1 if "reset" not in str(exc).lower() else -2
                return response.status_code

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.uploads) as pool:
                statuses = list(pool.map(upload, range(args.uploads)))
            seconds = time.perf_counter() - t0
            tree = descendants(proc.pid)
            peak = max(status_mb(p, "VmHWM") for p in tree)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    print(
        json.dumps(
            {
                "uploads": args.uploads,
                "body_mb": args.body_mb,
                "server_args": args.server_args,
                "server_printed": printed,
                "real_keys_status": real.status_code,
                "real_keys_mb": len(client.evaluation_keys()) / 1e6,
                "statuses": dict(Counter(statuses)),
                "seconds": round(seconds, 1),
                "start_rss_mb": round(start_rss, 1),
                "peak_rss_mb": round(peak, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    keep_exit_status()
    main()
