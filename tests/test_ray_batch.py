"""``predict --ray``: resumable batch jobs over a real Ray cluster (a head and two worker nodes
on 127.0.0.1, :mod:`ray_cluster`), compared byte for byte with the local ``predict``.

The tiny model ``a`` is bit-exact, so that a chunk run on any node decrypts to what the local
run gives. Bad input is refused before Ray is reached: those tests need no cluster.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fheqnn import FheModelClient
from fheqnn.cli import main
from fheqnn.serving.batch_journal import ChunkJournal, job_header, journal_path
from helpers import checksum
from ray_cluster import local_cluster, ray_env

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: Rows of the input table (a few seconds of encrypted work on the tiny model).
N_ROWS = 30

#: Seconds any wait of these tests may take (bounded waits).
WAIT_SECONDS = 180.0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> dict[str, Any]:
    """An input table with a column of row ids, and the local ``predict``'s table of it."""
    root = tmp_path_factory.mktemp("ray_batch")
    table = root / "in.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "f0", "f1", "f2", "f3"])
        for i, row in enumerate(tiny_models.x[:N_ROWS]):
            writer.writerow([f"r{i}", *(repr(float(v)) for v in row)])
    local = root / "local.csv"
    assert main([*_predict(tiny_models, table, local), "--quiet"]) == 0
    return {"root": root, "input": table, "local": local.read_bytes(), "models": tiny_models}


def _predict(models: Any, table: Path, out: Path) -> list[str]:
    return [
        "predict",
        str(models.a),
        "--keys",
        str(models.keys_a),
        "--input",
        str(table),
        "--id",
        "id",
        "--out",
        str(out),
    ]


def _rows_of(ws: dict[str, Any]) -> np.ndarray:
    """The feature rows of the input table, as ``predict`` reads them."""
    return np.loadtxt(ws["input"], delimiter=",", skiprows=1, usecols=(1, 2, 3, 4))


def _journal_of(ws: dict[str, Any], out: Path, rows: np.ndarray, **changes: Any) -> ChunkJournal:
    """A journal beside ``out`` holding chunk 0 of a job over ``rows`` (header fields
    ``changes``d: another job's)."""
    client = FheModelClient(ws["models"].a, ws["models"].keys_a)
    header = job_header(client.model_id, client.key_info.key_id, rows, 4)
    journal = ChunkJournal.open(journal_path(out), {**header, **changes}, client.part.n_outputs)
    journal.save(0, np.zeros((4, client.part.n_outputs)))
    return journal


# ---------------------------------------------------------------------------- bad input


def test_ray_needs_out_and_ray_options_need_ray(ws, tmp_path, capsys) -> None:
    args = _predict(ws["models"], ws["input"], tmp_path / "x.csv")
    no_out = args[: args.index("--id")]
    assert main([*no_out, "--ray", "local"]) == 2
    assert "--ray needs --out FILE.csv or FILE.npy" in capsys.readouterr().err
    assert main([*args, "--chunk-rows", "4"]) == 2
    assert "--chunk-rows only apply with --ray ADDRESS" in capsys.readouterr().err
    assert main([*args, "--ray", "local", "--server", "http://127.0.0.1:1"]) == 2
    assert "either --server URL or --ray ADDRESS" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"key_id": "0" * 16}, "other keys: key_id 0000000000000000 there"),
        ({"rows_sha256": "f" * 64}, "other input rows: rows_sha256 ffffffffffff... there"),
        ({"chunk_rows": 2}, "another chunk size: chunk_rows 2 there, 4 here"),
    ],
)
def test_a_journal_of_another_job_is_refused_and_left_alone(
    ws, tmp_path, capsys, changes, reason
) -> None:
    out = tmp_path / "pred.csv"
    _journal_of(ws, out, _rows_of(ws), **changes)
    before = checksum(tmp_path)
    # Refused before Ray is reached: "local" would start an instance.
    code = main([*_predict(ws["models"], ws["input"], out), "--ray", "local", "--chunk-rows", "4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{journal_path(out)} holds finished chunks of another job ({reason}" in err
    assert "remove it, or pass --overwrite to discard it and start over" in err
    assert checksum(tmp_path) == before


def test_a_partial_folder_that_is_not_a_journal_is_never_replaced(ws, tmp_path, capsys) -> None:
    out = tmp_path / "pred.csv"
    journal_path(out).mkdir()
    (journal_path(out) / "notes.txt").write_text("mine")
    before = checksum(tmp_path)
    args = [*_predict(ws["models"], ws["input"], out), "--ray", "local", "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not a journal of fheqnn's batch jobs: it is never replaced" in err
    assert checksum(tmp_path) == before


# ---------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def cluster() -> Any:
    with local_cluster(worker_nodes=2) as running:
        yield running


def _chunks_per_node(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    """What ``score_on_ray`` logged of the chunks each Ray node ran."""
    records = [r for r in caplog.records if r.getMessage().startswith("chunks per Ray node:")]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    nodes = records[0].args
    assert isinstance(nodes, dict)
    return nodes


@pytest.mark.slow
def test_a_batch_over_two_worker_nodes_equals_the_local_run(ws, cluster, tmp_path, caplog) -> None:
    """Chunks land on both worker nodes; the table is the local one, byte for byte. A stale
    journal of another job is discarded with --overwrite."""
    out = tmp_path / "ray.csv"
    _journal_of(ws, out, _rows_of(ws)[:8])
    args = [*_predict(ws["models"], ws["input"], out), "--ray", cluster.address]
    caplog.set_level("INFO", logger="fheqnn.serving.ray_batch")
    start = time.perf_counter()
    assert main([*args, "--chunk-rows", "3", "--quiet", "--overwrite"]) == 0
    print(f"{N_ROWS} rows over the cluster in {time.perf_counter() - start:.1f} s")
    assert out.read_bytes() == ws["local"]
    assert not journal_path(out).exists()
    nodes = _chunks_per_node(caplog)
    assert sum(nodes.values()) == 10
    workers = {node.node_id for node in cluster.workers}
    assert workers <= set(nodes), (workers, nodes)


@pytest.mark.slow
def test_an_interrupted_job_resumes_without_running_its_saved_chunks(
    ws, cluster, tmp_path, capsys
) -> None:
    """SIGTERM to ``fheqnn predict --ray`` (another driver of the cluster) once chunks are
    saved: it exits 143 and says how many rows are saved; the same command then runs only the
    other chunks."""
    out = tmp_path / "ray.csv"
    args = [*_predict(ws["models"], ws["input"], out), "--ray", cluster.address]
    args += ["--chunk-rows", "1", "--ray-tasks", "1", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fheqnn.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ray_env(), "PYTHONPATH": SRC},
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while len(list(journal_path(out).glob("chunk-*.npy"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=WAIT_SECONDS)
    assert proc.returncode == 143, (stdout, stderr)
    assert stderr.strip() == "fheqnn: terminated (SIGTERM)", stderr
    saved = len(list(journal_path(out).glob("chunk-*.npy")))
    assert 2 <= saved < N_ROWS
    assert stdout.splitlines()[-1] == (
        f"{saved} of {N_ROWS} rows are saved in {journal_path(out)}/: the same command "
        "resumes from there"
    )
    assert not out.exists()

    assert main(args) == 0
    said = capsys.readouterr().out
    assert (
        f"resuming from {journal_path(out)}/: {saved} of {N_ROWS} chunks ({saved} rows) are "
        "done and not run again"
    ) in said
    assert re.search(rf"{N_ROWS - saved} chunks run on \d Ray node\(s\) .*, {saved} reused", said)
    assert out.read_bytes() == ws["local"]
    assert not journal_path(out).exists()


@pytest.mark.slow
def test_a_worker_node_lost_mid_job_still_gives_every_row_once(
    ws, cluster, tmp_path, caplog
) -> None:
    """A worker node is killed once chunks have come back (others are running on it): Ray runs
    its tasks again elsewhere, and the table is the local one. Last in this module: the
    cluster has one worker node left after it."""
    out = tmp_path / "ray.csv"
    lost = cluster.workers[0]
    removed = threading.Event()

    def kill_a_node() -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if len(list(journal_path(out).glob("chunk-*.npy"))) >= 2:
                cluster.remove(lost)
                removed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_node, daemon=True)
    killer.start()
    caplog.set_level("INFO", logger="fheqnn.serving.ray_batch")
    args = [*_predict(ws["models"], ws["input"], out), "--ray", cluster.address]
    assert main([*args, "--chunk-rows", "2", "--quiet"]) == 0
    killer.join(WAIT_SECONDS)
    assert removed.is_set()
    assert out.read_bytes() == ws["local"]
    assert sum(_chunks_per_node(caplog).values()) == N_ROWS // 2
