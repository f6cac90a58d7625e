"""The benchmark tool: the quick profile end to end, and the lookup floor measurement."""

from __future__ import annotations

import json

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


@pytest.mark.encrypted
def test_lookup_floor_measures_something() -> None:
    floor = bench.lookup_floor(2, repeats=1, batch=4)
    assert floor["bits"] == 2
    assert 0 < floor["per_lookup_s"] < floor["single_lookup_s"] * 4
