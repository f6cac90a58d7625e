"""The benchmark tool: the quick profile end to end, and the lookup floor measurement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fheqnn import bench
from fheqnn.cli import main


@pytest.mark.slow
def test_quick_profile_writes_rows_table_and_plots_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "quick.jsonl"
    args = ["bench", "--profile", "quick", "--prune", "0", "0.5", "--widths", "1", "2"]
    args += ["--epochs", "30", "--rows", "0", "--out", str(out), "--report-dir", str(tmp_path)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cells = [(r["dataset"], r["width"], r["prune"], r["profile"]) for r in rows]
    assert cells == [("iris", w, p, "default") for w in (1, 2) for p in (0.0, 0.5)]
    for row in rows:
        assert row["pbs"] >= row["hidden_neurons"] > 0
        assert all(layer["proven_bits"] <= row["n_accum_bits"] for layer in row["layers"])
        assert 0.0 <= row["acc_simulated"] <= 1.0 and "acc_float_mlp" in row
    # Structured pruning removes lookups; a wider network has more.
    assert rows[1]["hidden_neurons"] < rows[0]["hidden_neurons"] < rows[2]["hidden_neurons"]
    table = (tmp_path / "quick.md").read_text()
    # The row says which rounding and error probability the compiler chose.
    chosen = rows[1]
    p_error = "default" if chosen["p_error"] is None else f"{chosen['p_error']:g}"
    assert f"| iris | 0.50 | {chosen['rounding']} | {p_error} |" in table
    assert chosen["rounding"] in ("exact", "approximate")
    assert "| iris | x2 | 50 % | fheqnn default | 1 |" in table
    assert "## Pick per data set" in table
    for plot in ("quick_latency.png", "quick_tradeoff.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    # Run again: every cell is in the file with these settings, nothing is measured again.
    before = out.read_bytes()
    assert main(args) == 0
    assert out.read_bytes() == before
    # Other settings are other measurements: one more width adds its two cells only.
    assert main([*args[:7], "1", "3", *args[9:]]) == 0
    widths = [json.loads(line)["width"] for line in out.read_text().splitlines()]
    assert widths == [1, 1, 2, 2, 3, 3]


def test_the_sweep_summary_takes_the_worst_and_mean_of_seeds_and_draws_the_front() -> None:
    def row(seed: int, prune: float, acc: float, latency: float, profile: str = "default"):
        return {
            "dataset": "iris",
            "width": 2,
            "prune": prune,
            "profile": profile,
            "seed": seed,
            "acc_clear": acc,
            "acc_simulated": acc,
            "pbs": 10,
            "latency_single_s": latency,
        }

    rows = [row(0, 0.0, 0.90, 1.0), row(1, 0.0, 0.96, 3.0), row(0, 0.5, 0.92, 0.5)]
    rows += [row(1, 0.5, 0.92, 0.5), row(0, 0.0, 0.97, 2.0, "exact")]
    records = bench.aggregate(rows)
    first = records[0]
    assert (first["prune"], first["profile"], first["seeds"]) == (0.0, "default", 2)
    assert first["acc_sim_worst"] == 0.90
    assert first["acc_sim_mean"] == pytest.approx(0.93)
    assert first["latency_s"] == pytest.approx(2.0)
    # The pruned cell is 1 point under the unpruned one on average (0.92 against 0.93) and four
    # times faster: it is the pick (within one point of the best); at 0.915 it would not be.
    picks = {p["profile"]: p for p in bench.picks(records)}
    assert picks["default"]["prune"] == 0.5 and picks["exact"]["prune"] == 0.0
    worse = [r if r["prune"] == 0.0 else {**r, "acc_simulated": 0.915} for r in rows]
    picks = {p["profile"]: p for p in bench.picks(bench.aggregate(worse))}
    assert picks["default"]["prune"] == 0.0
    assert bench.pareto_front([(1.0, 90.0), (2.0, 89.0), (3.0, 95.0), (0.5, 80.0)]) == [
        (0.5, 80.0),
        (1.0, 90.0),
        (3.0, 95.0),
    ]


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


def test_a_circuit_without_lookups_has_no_floor_and_no_ratio_to_it() -> None:
    """Concrete folds tables that are constant over their inputs: a pruned iris network with
    one constant neuron per hidden layer compiled to 0 PBS, and the floor divided by zero."""
    from fheqnn.bench.floor import floor_measures

    row = {
        "pbs": 0,
        "layers": [{"neurons": 1, "lookup_bits": 3}, {"neurons": 3, "lookup_bits": None}],
        "lookup_bits_max": 3,
        "p_error": 1e-4,
        "latency_single_s": 0.05,
    }
    floors: dict = {}
    out = floor_measures(row, floors, repeats=1)
    assert out["floor_s"] == 0.0 and out["floor_rows_s"] is None
    assert out["latency_over_floor"] is None
    assert floors == {}  # nothing was measured for it
