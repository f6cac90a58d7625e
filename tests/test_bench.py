"""The benchmark tool: the quick profile end to end, and the lookup floor measurement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fheqnn import bench
from fheqnn.cli import main


@pytest.mark.slow
def test_quick_profile_writes_rows_table_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "quick.jsonl"
    code = main(
        [
            "bench",
            "--profile",
            "quick",
            "--prune",
            "0",
            "0.5",
            "--epochs",
            "30",
            "--out",
            str(out),
            "--report-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["dataset"], r["prune"]) for r in rows] == [("iris", 0.0), ("iris", 0.5)]
    for row in rows:
        assert row["pbs"] >= row["hidden_neurons"] > 0
        assert all(layer["proven_bits"] <= row["n_accum_bits"] for layer in row["layers"])
        assert 0.0 <= row["acc_simulated"] <= 1.0 and "acc_float_mlp" in row
    # Structured pruning removes lookups.
    assert rows[1]["hidden_neurons"] < rows[0]["hidden_neurons"]
    table = (tmp_path / "quick.md").read_text()
    # The row says which rounding and error probability the compiler chose.
    chosen = rows[1]
    p_error = "default" if chosen["p_error"] is None else f"{chosen['p_error']:g}"
    assert f"| iris | 0.50 | {chosen['rounding']} | {p_error} |" in table
    assert chosen["rounding"] in ("exact", "approximate")
    assert (tmp_path / "quick.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_bad_prune_value_is_refused(tmp_path, capsys) -> None:
    code = main(["bench", "--prune", "1.5", "--out", str(tmp_path / "x.jsonl")])
    assert code == 2
    assert "--prune values must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
@pytest.mark.encrypted
def test_lookup_floor_measures_something() -> None:
    floor = bench.lookup_floor(2, repeats=1, batch=4)
    assert floor["bits"] == 2
    assert 0 < floor["per_lookup_s"] < floor["single_lookup_s"] * 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--throughput-rows", "-1"], "--throughput-rows must be >= 0, got -1"),
        (["--throughput-batches", "1", "0"], "--throughput-batches values must be in [1, 1024]"),
    ],
)
def test_bad_throughput_options_are_refused(tmp_path, capsys, args, message) -> None:
    code = main(["bench", *args, "--out", str(tmp_path / "x.jsonl")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_table_shows_throughput_and_its_floor() -> None:
    row = {
        "dataset": "iris",
        "prune": 0.0,
        "acc_clear": 0.9,
        "acc_simulated": 0.9,
        "pbs": 12,
        "n_accum_bits": 8,
        "compile_s": 1.0,
        "layers": [{"proven_bits": 7, "measured_bits": 6, "lookup_bits": 4}],
        "throughput_rows_s": {"1": 2.0, "8": 3.25, "32": 3.5},
        "floor_rows_s": 4.125,
    }
    table = bench.markdown_table([row, {**row, "prune": 0.5, "throughput_rows_s": None}])
    lines = table.splitlines()
    assert "rows/s by rows per call" in lines[0] and "floor rows/s" in lines[0]
    assert lines[2].endswith("| 1: 2.00, 8: 3.25, 32: 3.50 | 4.12 |")
    assert lines[3].endswith("| - | 4.12 |")


@pytest.mark.encrypted
@pytest.mark.slow
def test_throughput_of_batched_circuits() -> None:
    from fheqnn import FheModelClient, FheModelServer
    from helpers import tiny_classifier

    rng = np.random.default_rng(2)
    centers = rng.normal(scale=2.0, size=(2, 3))
    y = rng.integers(0, 2, size=60)
    x = centers[y] + rng.normal(scale=0.6, size=(60, 3))
    clf = tiny_classifier(x, y, max_epochs=10)
    model = clf.compile(x, rounding="off", p_error=None).fhe_model_
    out = bench.throughput(model, x[:3], (1, 2), FheModelClient, FheModelServer)
    assert out["throughput_rows"] == 3
    assert set(out["throughput_rows_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in out["throughput_rows_s"].values())
    # Bit-exact circuits: the batched one predicts what the one-row one does.
    assert out["throughput_agreement"] == {"1": 1.0, "2": 1.0}
    assert model.batch_size == 1  # the measured model itself is left as it was
