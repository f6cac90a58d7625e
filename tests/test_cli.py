"""The ``fheqnn`` command-line tool, called in-process: ``main([...])`` returns the exit code.

One tiny iris network is trained, compiled (``--rounding off``: lookups of at most 5 bits, keys
in a few seconds) and given keys once per module; every test that could change those folders
works on a copy. Exit codes: 0 success, 2 bad input, 3 accumulator budget exceeded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fheqnn.cli import main

SUBCOMMANDS = (
    "train",
    "export",
    "compile",
    "report",
    "keygen",
    "encrypt",
    "run",
    "decrypt",
    "predict",
    "demo",
)

# Small and cheap to encrypt. (``--epochs 5`` on iris makes exactly 10 optimizer steps, the
# schedule length that once divided by zero in the learning-rate warm-up: kept as a regression
# test in test_train_with_ten_optimizer_steps.)
NETWORK = {
    "n_layers": 2,
    "multiplier": 1,
    "n_w_bits": 2,
    "n_a_bits": 2,
    "n_accum_bits": 5,
    "epochs": 6,
}
NETWORK_ARGS = [
    "--n-layers", str(NETWORK["n_layers"]),
    "--multiplier", str(NETWORK["multiplier"]),
    "--n-w-bits", str(NETWORK["n_w_bits"]),
    "--n-a-bits", str(NETWORK["n_a_bits"]),
    "--n-accum-bits", str(NETWORK["n_accum_bits"]),
    "--epochs", str(NETWORK["epochs"]),
    "--quiet",
]  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def run_cli(*args: object) -> tuple[int, str, str]:
    """Call the CLI in-process (for module fixtures, where capsys is not available)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def snapshot(*folders: Path) -> dict[tuple[str, str], bytes | None]:
    """Every file (bytes) and sub-folder (None) below ``folders``, hidden ones included."""
    state: dict[tuple[str, str], bytes | None] = {}
    for folder in folders:
        state[(str(folder), ".")] = None if folder.exists() else b"<absent>"
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                rel = str(path.relative_to(folder))
                state[(str(folder), rel)] = path.read_bytes() if path.is_file() else None
    return state


def write_train_folder(out: Path) -> None:
    """The shared training folder, made by the ``train`` subcommand itself."""
    code, _, err = run_cli("train", "--dataset", "iris", *NETWORK_ARGS, "--out", out)
    assert code == 0, err


def expected_predictions(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """Class labels the compiled model's integer program gives (what the circuit computes),
    with the client contract's standardization, quantization and decoding around it."""
    from fheqnn.compiler.serialize import program_from_dict
    from fheqnn.contract import ClientContract
    from fheqnn.runtime.artifacts import open_model_folder

    folder = open_model_folder(model_dir)
    program = program_from_dict(folder.read_json("program.json"))
    contract = ClientContract.from_dict(folder.read_json("client.json"))
    acc = program.run_integer(contract.quantize(x))
    return np.asarray(contract.postprocess(contract.dequantize(acc)))


@dataclass(frozen=True)
class Workspace:
    root: Path
    train: Path
    model: Path
    keys: Path
    compile_out: str
    keygen_out: str


@dataclass(frozen=True)
class OtherModel:
    model: Path
    keys: Path


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Train once, then ``compile`` and ``keygen`` through the CLI into circuits/x and keys/x."""
    root = tmp_path_factory.mktemp("cli")
    write_train_folder(root / "train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # Concrete's default error probability: encrypted results are compared bit for bit
        # with the integer program.
        code, compile_out, err = run_cli(
            "compile", "--from", "train", "--rounding", "off", "--p-error", "default",
            "--out", "circuits/x",
        )  # fmt: skip
        assert code == 0, err
        code, keygen_out, err = run_cli("keygen", "circuits/x", "--keys", "keys/x")
        assert code == 0, err
    return Workspace(
        root, root / "train", root / "circuits/x", root / "keys/x", compile_out, keygen_out
    )


@pytest.fixture(scope="module")
def other(ws: Workspace) -> OtherModel:
    """A second compiled model of the same network (other options, so another model id)."""
    model, keys = ws.root / "circuits/y", ws.root / "keys/y"
    code, _, err = run_cli(
        "compile", "--from", ws.train, "--rounding", "2", "--exact",
        "--out", model,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("keygen", model, "--keys", keys)
    assert code == 0, err
    return OtherModel(model, keys)


def encrypt_rows(
    ws: Workspace, out: Path, rows: int = 1, model: Path | None = None, keys: Path | None = None
) -> Path:
    """``encrypt`` the first test rows (of ``ws``'s model unless another one is given)."""
    code, _, err = run_cli(
        "encrypt", model or ws.model, "--keys", keys or ws.keys,
        "--input", ws.train / "test_x.npy", "--rows", rows, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    return out


def assert_input_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """Exit code 2 and an ``fheqnn: error:`` message (no traceback) naming ``needles``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "fheqnn: error:" in err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    if command is None:
        assert out.startswith("usage: fheqnn")
        for name in SUBCOMMANDS:
            assert name in out
    else:
        assert f"usage: fheqnn {command}" in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: fheqnn" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the encrypted flow


def test_compile_prints_the_bit_width_table(ws: Workspace) -> None:
    assert "proven bits" in ws.compile_out
    assert "measured bits" in ws.compile_out
    assert "PBS per row" in ws.compile_out
    files = {p.name for p in ws.model.iterdir()}
    assert {"server.zip", "program.json", "client.specs", "client.json", "report.json",
            "manifest.json"} <= files  # fmt: skip


def test_compile_and_report_state_how_repeatable_answers_are(
    ws: Workspace, other: OtherModel, capsys: pytest.CaptureFixture[str]
) -> None:
    # ws: no rounding, Concrete's default error bound: not bit-exact, for the error bound.
    assert "stability: not bit-exact (Concrete's default error bound" in ws.compile_out
    assert main(["report", str(ws.model)]) == 0
    assert "stability: not bit-exact (Concrete's default error bound" in capsys.readouterr().out
    # other: compiled with --exact, the bit-exact profile.
    assert main(["report", str(other.model)]) == 0
    assert "stability: bit-exact" in capsys.readouterr().out
    assert main(["report", str(other.model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "exact" and data["p_error"] == 2.0**-40
    assert data["stability"]["bit_exact"] is True


def test_report_text_and_json(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(ws.model)]) == 0
    text = capsys.readouterr().out
    assert "proven bits" in text and "PBS per row" in text
    assert main(["report", str(ws.model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "layers" in data and "pbs_count" in data
    # compile --from applies the trained module's budget, recorded in train.json
    assert data["n_accum_bits"] == NETWORK["n_accum_bits"]
    assert "accumulator budget: 5 bits (the trained module's, from" in ws.compile_out
    assert len(data["layers"]) == NETWORK["n_layers"]
    # --rounding off: one lookup per hidden neuron
    assert data["pbs_count"] == data["hidden_neurons"] > 0
    assert f"{data['pbs_count']} PBS per row" in ws.compile_out


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_compile_from_something_that_is_not_a_training_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """``--from`` a CSV (a usual slip: the data instead of the run) or a missing folder."""
    source = tmp_path / "data.csv"
    if kind == "file":
        source.write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    code = main(["compile", "--from", str(source), "--out", str(tmp_path / "m")])
    said = "got a file" if kind == "file" else "it does not exist"
    assert_input_error(capsys, code, "expected the folder of a training run", said)
    assert snapshot(tmp_path) == before


def test_compile_with_an_explicit_precision_says_which_grids_moved(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--rounding N`` moves rounding grids; compile and report count them per layer, and the
    saved program keeps them (format 2)."""
    out = tmp_path / "circuits" / "r2"
    code = main([
        "compile", "--from", str(ws.train), "--rounding", "2", "--p-error", "default",
        "--out", str(out),
    ])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    moved = json.loads((out / "report.json").read_text())["rounding_grid_moved"]
    assert any(moved)
    assert "rounding grids moved (align_rounding): " in text
    assert main(["report", str(out)]) == 0
    assert "rounding grids moved" in capsys.readouterr().out
    assert json.loads((out / "program.json").read_text())["format"] == 2
    assert "rounding grids moved" not in ws.compile_out  # "auto": none moved by default


def test_compile_with_batch_size(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "circuits" / "b2"
    code = main([
        "compile", "--from", str(ws.train), "--rounding", "off", "--p-error", "default",
        "--batch-size", "2", "--out", str(out),
    ])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "2 rows per circuit call" in text
    contract = json.loads((out / "client.json").read_text())
    assert (contract["format"], contract["batch_size"]) == (3, 2)
    report = json.loads((out / "report.json").read_text())
    assert report["batch_size"] == 2
    # Per row, as for one row per call.
    single = json.loads((ws.model / "report.json").read_text())
    assert report["pbs_count"] == single["pbs_count"]
    assert main(["report", str(out)]) == 0
    assert "batch size: 2 rows per circuit call" in capsys.readouterr().out
    assert main(["report", str(ws.model)]) == 0
    assert "batch size: 1 row per circuit call" in capsys.readouterr().out
    assert "1 row per circuit call" in ws.compile_out
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "--batch-size N" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "expected a number of rows >= 1, got 0"),
        ("-3", "expected a number of rows >= 1, got -3"),
        ("1025", "expected at most 1024 rows, got 1025"),
        ("many", "expected a whole number >= 1, got 'many'"),
    ],
)
def test_compile_refuses_a_bad_batch_size(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, says: str
) -> None:
    """Named as the user typed it (``--batch-size``), before anything is read or written."""
    before = snapshot(tmp_path, ws.train)
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--from", str(ws.train), "--batch-size", value,
              "--out", str(tmp_path / "circuits" / "bad")])  # fmt: skip
    assert exc.value.code == 2
    assert f"argument --batch-size: {says}" in capsys.readouterr().err
    assert snapshot(tmp_path, ws.train) == before


def test_keygen_writes_an_owner_only_secret_key(ws: Workspace) -> None:
    assert {p.name for p in ws.keys.iterdir()} == {"secret.keys", "evaluation.keys", "key.json"}
    assert stat.S_IMODE(os.stat(ws.keys / "secret.keys").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ws.keys).st_mode) == 0o700
    info = json.loads((ws.keys / "key.json").read_text())
    manifest = json.loads((ws.model / "manifest.json").read_text())
    assert info["model_id"] == manifest["model_id"]
    assert f"key id {info['key_id']}" in ws.keygen_out


@pytest.mark.encrypted
def test_encrypt_run_decrypt_matches_the_simulation(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    model, keys, test_x = str(ws.model), str(ws.keys), str(ws.train / "test_x.npy")
    assert main(["encrypt", model, "--keys", keys, "--input", test_x, "--rows", "3",
                 "--out", "data/in.bin"]) == 0  # fmt: skip
    assert "wrote data/in.bin" in capsys.readouterr().out
    assert main(["run", model, "--evaluation-keys", f"{keys}/evaluation.keys",
                 "--input", "data/in.bin", "--out", "data/out.bin"]) == 0  # fmt: skip
    assert main(["decrypt", model, "--keys", keys, "--input", "data/out.bin",
                 "--out", "pred.npy"]) == 0  # fmt: skip
    pred = np.load(tmp_path / "pred.npy")
    x = np.load(test_x)[:3]
    np.testing.assert_array_equal(pred, expected_predictions(ws.model, x))

    # --proba gives rows of probabilities; without --out, decrypt prints.
    assert main(["decrypt", model, "--keys", keys, "--input", "data/out.bin", "--proba",
                 "--out", "proba.npy"]) == 0  # fmt: skip
    proba = np.load(tmp_path / "proba.npy")
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # An existing results file is replaced only when asked.
    capsys.readouterr()
    assert main(["decrypt", model, "--keys", keys, "--input", "data/out.bin",
                 "--out", "proba.npy"]) == 2  # fmt: skip
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["decrypt", model, "--keys", keys, "--input", "data/out.bin",
                 "--out", "proba.npy", "--overwrite"]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), pred)
    capsys.readouterr()
    assert main(["decrypt", model, "--keys", keys, "--input", "data/out.bin"]) == 0
    assert capsys.readouterr().out.strip() == np.array2string(pred, threshold=200)


@pytest.mark.encrypted
def test_predict_prints_accuracy(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "predict", str(ws.model), "--keys", str(ws.keys),
        "--input", str(ws.train / "test_x.npy"), "--labels", str(ws.train / "test_y.npy"),
        "--rows", "3", "--quiet",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy (encrypted): " in out
    x, y = np.load(ws.train / "test_x.npy")[:3], np.load(ws.train / "test_y.npy")[:3]
    expected = np.mean(expected_predictions(ws.model, x) == y)
    assert f"accuracy (encrypted): {expected:.4f}" in out
    assert "3 rows" in out


@pytest.mark.encrypted
@pytest.mark.slow
def test_predict_scores_a_regressor_with_r2_not_equality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Real-valued predictions never equal the true values: a regressor printed "accuracy
    # (encrypted): 0.0000" until session 6. It gets R^2 and the mean absolute error instead.
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 3))
    y = 40.0 * x[:, 0] - 20.0 * x[:, 1] + 100.0
    lines = ["a,b,c,level"] + [
        ",".join(f"{v:.4f}" for v in row) + f",{t:.2f}" for row, t in zip(x, y, strict=True)
    ]
    csv = tmp_path / "levels.csv"
    csv.write_text("\n".join(lines) + "\n")
    train, model, keys = tmp_path / "train", tmp_path / "model", tmp_path / "keys"
    assert main(["train", "--data", str(csv), "--task", "regressor", *NETWORK_ARGS,
                 "--out", str(train)]) == 0  # fmt: skip
    assert main(["compile", "--from", str(train), "--rounding", "off", "--p-error", "default",
                 "--out", str(model)]) == 0  # fmt: skip
    assert main(["keygen", str(model), "--keys", str(keys)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), "--keys", str(keys), "--input", str(csv),
                 "--target", "level", "--rows", "4", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "accuracy" not in out
    expected = expected_predictions(model, x[:4])
    assert (
        f"R^2 {r2_score(y[:4], expected):.4f}, mean absolute error "
        f"{mean_absolute_error(y[:4], expected):.4g} (encrypted)" in out
    )
    from fheqnn.errors import InvalidParameterError
    from fheqnn.runtime import FheModelClient, FheModelServer

    # The same network compiled from its ONNX file alone has no output spec ("raw"): its one
    # output is still scored as a value (it printed an accuracy of 0, found in review).
    raw, raw_keys = tmp_path / "raw", tmp_path / "raw_keys"
    assert main(["compile", "--onnx", str(train / "model.onnx"), "--calibration",
                 str(train / "calibration.npy"), "--rounding", "off", "--p-error", "default",
                 "--out", str(raw)]) == 0  # fmt: skip
    assert main(["keygen", str(raw), "--keys", str(raw_keys)]) == 0
    capsys.readouterr()
    assert main(["predict", str(raw), "--keys", str(raw_keys), "--input", str(train / "test_x.npy"),
                 "--labels", str(train / "test_y.npy"), "--rows", "3", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "mean absolute error" in out and "accuracy" not in out
    raw_client = FheModelClient(raw, raw_keys)
    with pytest.raises(InvalidParameterError, match="a model with a single output"):
        raw_client.check_proba()
    # Written to a table, the values keep every digit.
    table = tmp_path / "levels_pred.csv"
    assert main(["predict", str(model), "--keys", str(keys), "--input", str(csv), "--target",
                 "level", "--rows", "4", "--quiet", "--out", str(table)]) == 0  # fmt: skip
    lines = table.read_text().splitlines()
    assert lines[0] == "prediction"
    np.testing.assert_array_equal([float(v) for v in lines[1:]], expected)
    # Class probabilities of a regressor are refused (a softmax of one value printed [[1.]]).
    client = FheModelClient(model, keys)
    results = FheModelServer(model).run(client.encrypt(x[:2]), client.evaluation_keys())
    with pytest.raises(InvalidParameterError, match="a regressor; its results are values"):
        client.decrypt_proba(results)
    (tmp_path / "out.bin").write_bytes(results)
    before = snapshot(tmp_path)
    code = main(["decrypt", str(model), "--keys", str(keys), "--input", str(tmp_path / "out.bin"),
                 "--proba", "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert_input_error(capsys, code, "class probabilities: this model is a regressor")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- train / export


def test_train_then_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "train"
    assert main(["train", "--dataset", "iris", *NETWORK_ARGS, "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {
        "estimator.pkl", "model.onnx", "calibration.npy", "test_x.npy", "test_y.npy",
        "output_spec.json", "train.json",
    }  # fmt: skip
    onnx_path = tmp_path / "exported" / "new.onnx"
    assert main(["export", "--model", str(out / "estimator.pkl"), "--out", str(onnx_path)]) == 0
    assert "exported" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    # Exporting again: refused without --overwrite, done with it; never over another file.
    again = ["export", "--model", str(out / "estimator.pkl"), "--out", str(onnx_path)]
    assert main(again) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    notes = tmp_path / "notes.onnx"
    notes.write_text("mine")
    assert main(["export", "--model", str(out / "estimator.pkl"), "--out", str(notes),
                 "--overwrite"]) == 2  # fmt: skip
    assert "is not an ONNX model" in capsys.readouterr().err and notes.read_text() == "mine"


def test_train_from_csv_with_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["f0,f1,f2,f3,target"]
    lines += [",".join(f"{v:.5f}" for v in row) + f",{t}" for row, t in zip(x, y, strict=True)]
    csv = tmp_path / "data.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "train"
    assert main(["train", "--data", str(csv), *NETWORK_ARGS, "--out", str(out)]) == 0
    assert "on 60 rows x 4 features" in capsys.readouterr().out
    assert (out / "model.onnx").is_file()
    assert np.load(out / "test_x.npy").shape == (20, 4)
    assert json.loads((out / "output_spec.json").read_text())["classes"] == [0, 1]


def test_train_with_ten_optimizer_steps(tmp_path: Path) -> None:
    args = [*NETWORK_ARGS]
    args[args.index("--epochs") + 1] = "5"
    out = tmp_path / "train"
    assert main(["train", "--dataset", "iris", *args, "--out", str(out)]) == 0
    assert (out / "model.onnx").is_file()


def test_train_needs_a_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tmp_path)
    code = main(["train", *NETWORK_ARGS, "--out", str(tmp_path / "train")])
    assert_input_error(capsys, code, "--dataset", "--data")
    assert snapshot(tmp_path) == before


def test_train_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    code = main(["train", "--dataset", "iris", *NETWORK_ARGS, "--out", str(out)])
    assert_input_error(capsys, code, "--overwrite")
    assert snapshot(tmp_path) == before


def test_export_of_a_missing_estimator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["export", "--model", str(tmp_path / "nope.pkl"), "--out", str(tmp_path / "m.onnx")]
    )
    assert_input_error(capsys, code, "nope.pkl", "does not exist")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- accumulator budget


def test_compile_over_the_accumulator_budget_exits_3(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "circuits" / "y"
    code = main(["compile", "--from", str(ws.train), "--n-accum-bits", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "accumulator budget exceeded" in err
    assert "n_accum_bits" in err
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_compile_with_a_missing_output_spec_is_refused(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "circuits" / "z"
    code = main(
        [
            "compile",
            "--from",
            str(ws.train),
            "--output-spec",
            str(tmp_path / "no.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "output spec file" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input: exit 2


def test_keygen_refuses_an_existing_key_folder(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(ws.keys, keys)
    before = snapshot(keys, ws.model)
    code = main(["keygen", str(ws.model), "--keys", str(keys)])
    assert_input_error(capsys, code, str(keys), "--overwrite")
    assert snapshot(keys, ws.model) == before
    assert list(tmp_path.iterdir()) == [keys]  # no temporary folder left next to it


@pytest.mark.parametrize("kind", ["csv", "npy"])
def test_encrypt_with_the_wrong_feature_count(
    kind: str, ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.load(ws.train / "test_x.npy")[:4, :3]
    data = tmp_path / f"x.{kind}"
    if kind == "csv":
        data.write_text("a,b,c\n" + "\n".join(",".join(map(str, row)) for row in x) + "\n")
    else:
        np.save(data, x)
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(["encrypt", str(ws.model), "--keys", str(ws.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert_input_error(capsys, code, "3 features", "expected 4")
    assert snapshot(tmp_path, ws.model, ws.keys) == before


def test_encrypt_refuses_nan(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.load(ws.train / "test_x.npy")[:4].copy()
    x[2, 1] = np.nan
    data = tmp_path / "x.npy"
    np.save(data, x)
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(["encrypt", str(ws.model), "--keys", str(ws.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert_input_error(capsys, code, "NaN", "rows [2]")
    assert snapshot(tmp_path, ws.model, ws.keys) == before


def test_run_with_a_truncated_ciphertext(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = encrypt_rows(ws, tmp_path / "in.bin", rows=2)
    data = ct.read_bytes()
    ct.write_bytes(data[: len(data) - 100])
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(["run", str(ws.model), "--evaluation-keys", str(ws.keys / "evaluation.keys"),
                 "--input", str(ct), "--out", str(tmp_path / "out.bin")])  # fmt: skip
    assert_input_error(capsys, code, "truncated")
    assert snapshot(tmp_path, ws.model, ws.keys) == before


@pytest.mark.parametrize("mismatch", ["ciphertext", "evaluation keys"])
def test_run_with_data_of_another_model(
    mismatch: str, ws: Workspace, other: OtherModel, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if mismatch == "ciphertext":
        ct = encrypt_rows(ws, tmp_path / "in.bin", model=other.model, keys=other.keys)
        eval_keys = ws.keys / "evaluation.keys"
    else:
        ct = encrypt_rows(ws, tmp_path / "in.bin")
        eval_keys = other.keys / "evaluation.keys"
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(["run", str(ws.model), "--evaluation-keys", str(eval_keys),
                 "--input", str(ct), "--out", str(tmp_path / "out.bin")])  # fmt: skip
    other_id = json.loads((other.model / "manifest.json").read_text())["model_id"]
    assert_input_error(capsys, code, f"made for compiled model {other_id}")
    assert snapshot(tmp_path, ws.model, ws.keys) == before


@pytest.mark.encrypted
def test_decrypt_with_keys_of_another_model(
    ws: Workspace, other: OtherModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = encrypt_rows(ws, tmp_path / "in.bin")
    result = tmp_path / "out.bin"
    assert main(["run", str(ws.model), "--evaluation-keys", str(ws.keys / "evaluation.keys"),
                 "--input", str(ct), "--out", str(result)]) == 0  # fmt: skip
    capsys.readouterr()
    before = snapshot(tmp_path, ws.model, other.keys)
    code = main(["decrypt", str(ws.model), "--keys", str(other.keys), "--input", str(result),
                 "--out", str(tmp_path / "pred.npy")])  # fmt: skip
    assert_input_error(capsys, code, str(other.keys), "generate keys for this model")
    assert snapshot(tmp_path, ws.model, other.keys) == before


def test_run_with_a_truncated_server_zip(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(ws.model, model)
    server = model / "server.zip"
    server.write_bytes(server.read_bytes()[:-10])
    ct = encrypt_rows(ws, tmp_path / "in.bin")
    before = snapshot(tmp_path, ws.keys)
    code = main(["run", str(model), "--evaluation-keys", str(ws.keys / "evaluation.keys"),
                 "--input", str(ct), "--out", str(tmp_path / "out.bin")])  # fmt: skip
    assert_input_error(capsys, code, "server.zip", "truncated")
    assert snapshot(tmp_path, ws.keys) == before


def test_keygen_with_a_tampered_client_json(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(ws.model, model)
    client = model / "client.json"
    data = bytearray(client.read_bytes())
    i = data.index(b'"n_features": 4') + len(b'"n_features": ')
    data[i : i + 1] = b"5"  # one byte, still valid JSON, same size
    client.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    code = main(["keygen", str(model), "--keys", str(tmp_path / "keys")])
    assert_input_error(capsys, code, "client.json", "checksum mismatch")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["encrypt", "{model}", "--keys", "{keys}", "--input", "{tmp}/missing.npy",
         "--out", "{tmp}/in.bin"],
        ["encrypt", "{model}", "--keys", "{keys}", "--input", "{tmp}/missing.csv",
         "--out", "{tmp}/in.bin"],
        ["run", "{model}", "--evaluation-keys", "{keys}/evaluation.keys",
         "--input", "{tmp}/missing.bin", "--out", "{tmp}/out.bin"],
        ["run", "{model}", "--evaluation-keys", "{tmp}/missing.keys",
         "--input", "{tmp}/missing.bin", "--out", "{tmp}/out.bin"],
        ["decrypt", "{model}", "--keys", "{keys}", "--input", "{tmp}/missing.bin"],
        ["predict", "{model}", "--keys", "{keys}", "--input", "{tmp}/missing.npy"],
        ["compile", "--onnx", "{tmp}/missing.onnx", "--calibration", "{tmp}/missing.npy",
         "--out", "{tmp}/c"],
        ["report", "{tmp}/missing"],
        ["keygen", "{tmp}/missing", "--keys", "{tmp}/k"],
        ["encrypt", "{model}", "--keys", "{tmp}/missing", "--input", "{tmp}/missing.npy",
         "--out", "{tmp}/in.bin"],
    ],
    ids=[
        "encrypt-input-npy", "encrypt-input-csv", "run-input", "run-evaluation-keys",
        "decrypt-input", "predict-input", "compile-calibration", "report-model",
        "keygen-model", "encrypt-keys",
    ],
)  # fmt: skip
def test_missing_files(
    argv: list[str], ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(model=ws.model, keys=ws.keys, tmp=tmp_path) for a in argv]
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(args)
    err = assert_input_error(capsys, code, "does not exist")
    assert "missing" in err
    assert snapshot(tmp_path, ws.model, ws.keys) == before


def test_unsupported_input_file_type(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "x.txt"
    data.write_text("1,2,3,4\n")
    before = snapshot(tmp_path, ws.model, ws.keys)
    code = main(["encrypt", str(ws.model), "--keys", str(ws.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert_input_error(capsys, code, "unsupported file type")
    assert snapshot(tmp_path, ws.model, ws.keys) == before


@pytest.mark.parametrize(
    ("flag", "name", "bad", "good"),
    [
        ("--replicas", "replicas", "0", "2"),
        ("--max-cached-keys", "max_cached_keys", "0", "1"),
        ("--workers", "workers", "-1", "3"),
        ("--max-request-mb", "max_request_mb", "0", "0.5"),
        ("--max-uploads", "max_uploads", "0", "3"),
        ("--max-request-rows", "max_request_rows", "0", "16"),
        ("--upload-seconds", "upload_seconds", "0", "2.5"),
    ],
)
def test_serve_options_check_the_bounds_their_config_declares(
    flag: str, name: str, bad: str, good: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fheqnn.cli.parser import build_parser
    from fheqnn.errors import InvalidParameterError
    from fheqnn.serving.config import ServeConfig
    from fheqnn.validation import field_bounds

    bounds = field_bounds(ServeConfig, name)
    # The library refuses the value, with the field's name ...
    with pytest.raises(InvalidParameterError, match=f"{name} must be"):
        ServeConfig((tmp_path,), **{name: bounds.parse(bad)})
    # ... and the command line refuses it where it is typed, by the same declaration.
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["serve", str(tmp_path), flag, bad])
    assert stopped.value.code == 2
    assert f"argument {flag}: {name} must be" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", str(tmp_path), flag, good])
    assert getattr(args, name) == bounds.parse(good)
    assert getattr(ServeConfig((tmp_path,), **{name: getattr(args, name)}), name) == bounds.parse(
        good
    )


def test_exact_refuses_a_larger_error_probability(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for p_error in ("default", "1e-3"):
        code = main(
            ["compile", "--from", str(ws.train), "--exact", "--p-error", p_error,
             "--out", str(tmp_path / "z")]
        )  # fmt: skip
        assert_input_error(capsys, code, "--exact sets the error probability per lookup")
        assert not (tmp_path / "z").exists()
