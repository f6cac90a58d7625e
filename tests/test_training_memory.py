"""A network too wide to train in the memory available is refused before it is built."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pytest

from fheqnn import NeuralNetClassifier
from fheqnn.cli import main
from fheqnn.errors import InsufficientMemoryError
from fheqnn.model.memory import (
    available_memory_bytes,
    check_training_fits,
    estimate_training_memory,
)
from fheqnn.model.qnn_module import SparseQuantNeuralNetwork

#: Features enough for a network no machine trains: 400,000-wide hidden layers, 1.6e11 weights
#: (some 9 TB). Four rows of them are 3.2 MB.
WIDE = 100_000


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_the_estimator_refuses_a_network_too_wide_before_allocating() -> None:
    x = np.random.default_rng(0).normal(size=(4, WIDE))
    clf = NeuralNetClassifier(max_epochs=1, verbose=0)
    before = _peak_rss()
    with pytest.raises(InsufficientMemoryError) as info:
        clf.fit(x, [0, 1, 0, 1])
    message = str(info.value)
    assert "\n" not in message
    assert "TB" not in message and "GB of memory" in message  # sizes in GB
    assert "hidden width 400000" in message and f"{WIDE} features" in message
    assert "module__n_hidden_neurons_multiplier (--multiplier)" in message
    assert "select fewer feature columns" in message
    assert not hasattr(clf, "module_")
    # Nothing of the network's size was allocated (a peak of ~9 TB could not even be tried;
    # the bound is loose: it only says no layer of it exists).
    assert _peak_rss() - before < 1 << 30


def test_the_module_refuses_a_network_too_wide() -> None:
    with pytest.raises(InsufficientMemoryError, match="n_hidden_neurons_multiplier"):
        SparseQuantNeuralNetwork(input_dim=WIDE, n_layers=3, n_outputs=2)


def test_the_refusal_follows_the_memory_available() -> None:
    # 10,000 columns at the default multiplier (the reported case): 2e9 weights.
    need = estimate_training_memory(10_000, 3, 2, 4, n_rows=569)
    assert need.parameters == 2_000_160_002 and need.total_bytes > 90e9
    with pytest.raises(InsufficientMemoryError, match=r"but 21\.6 GB is available") as info:
        check_training_fits(10_000, 3, 2, 4, n_rows=569, available=int(21.6e9))
    # The multiplier it names does fit, and a somewhat larger one does not.
    fitting = float(str(info.value).split("at most ")[1].split(" fits")[0])
    assert 0.5 < fitting < 4
    check_training_fits(10_000, 3, 2, fitting * 0.999, n_rows=569, available=int(21.6e9))
    with pytest.raises(InsufficientMemoryError):
        check_training_fits(10_000, 3, 2, fitting * 1.01, n_rows=569, available=int(21.6e9))
    # A small network fits a small machine.
    assert check_training_fits(30, 3, 2, 4, n_rows=1000, available=1 << 30).parameters < 20_000


def test_unknown_memory_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fheqnn.model import memory

    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)
    assert check_training_fits(10_000, 3, 2, 4).parameters == 2_000_160_002


def test_available_memory_reads_meminfo_and_falls_back(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24105000 kB\nMemAvailable:    2000000 kB\n")
    assert available_memory_bytes(meminfo) == 2_048_000_000
    # No such file (not Linux): os.sysconf's free pages, or unknown.
    fallback = available_memory_bytes(tmp_path / "missing")
    assert fallback is None or fallback > 0


def test_train_refuses_a_csv_too_wide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    columns = 20_000  # 80,000-wide layers: 6.4e9 weights
    header = ",".join(f"f{i}" for i in range(columns)) + ",label"
    rows = [",".join(f"{v:.2f}" for v in rng.normal(size=columns)) + f",{k % 2}" for k in range(12)]
    data = tmp_path / "wide.csv"
    data.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--target", "label", "--epochs", "1",
                 "--quiet", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "fheqnn: error:" in err and "Traceback" not in err, err
    assert "--multiplier" in err and "select fewer feature columns" in err
    assert not out.exists()
