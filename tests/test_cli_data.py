"""Users' own data files through the ``fheqnn`` CLI: a raw CSV from training to encrypted labels,
and bad files refused with exit code 2, a message naming the place, and nothing written."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fheqnn import InputRangeWarning
from fheqnn.cli import main
from fheqnn.tabular import inference_byte_limit
from test_cli import (
    NETWORK,
    NETWORK_ARGS,
    assert_input_error,
    expected_predictions,
    run_cli,
    snapshot,
)

HEADER = "alcohol,sulphates,noise,colour"


def wine_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled features (around 1000, around 0.05, noise) and string labels they determine."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(1000, 200, n), rng.normal(0.05, 0.01, n), rng.normal(0, 1, n)])
    y = np.where((x[:, 0] - 1000) / 200 + (x[:, 1] - 0.05) / 0.01 > 0, "red", "white")
    return x, y


def as_written(x: np.ndarray) -> np.ndarray:
    """The rows :func:`wine_csv` writes, as read back (rounded like the CSV)."""
    return np.column_stack([np.round(x[:, 0], 1), np.round(x[:, 1], 4), np.round(x[:, 2], 3)])


def wine_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A CSV as a spreadsheet writes it: header row, CRLF, a quoted field, string labels last."""
    lines = [HEADER]
    for row, label in zip(x, y, strict=True):
        lines.append(f'{row[0]:.1f},"{row[1]:.4f}",{row[2]:.3f},{label}')
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


@dataclass(frozen=True)
class Wine:
    root: Path
    train: Path
    model: Path
    keys: Path
    train_out: str
    compile_out: str


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Wine:
    """``train`` on the raw CSV, ``compile --from`` (no --n-accum-bits), ``keygen``."""
    root = tmp_path_factory.mktemp("wine")
    data = wine_csv(root / "wine.csv", *wine_rows(120, seed=0))
    train = root / "train"
    code, train_out, err = run_cli("train", "--data", data, *NETWORK_ARGS, "--out", train)
    assert code == 0, err
    model, keys = root / "circuits/wine", root / "keys/wine"
    code, compile_out, err = run_cli(
        "compile", "--from", train, "--rounding", "off", "--p-error", "default", "--out", model
    )
    assert code == 0, err
    code, _, err = run_cli("keygen", model, "--keys", keys)
    assert code == 0, err
    return Wine(root, train, model, keys, train_out, compile_out)


def test_train_on_a_raw_csv_keeps_names_and_string_labels(wine: Wine) -> None:
    assert "on 90 rows x 3 features" in wine.train_out
    info = json.loads((wine.train / "train.json").read_text())
    assert info["feature_names"] == ["alcohol", "sulphates", "noise"]
    assert info["target_name"] == "colour"
    assert info["n_accum_bits"] == NETWORK["n_accum_bits"]
    spec = json.loads((wine.train / "output_spec.json").read_text())
    assert spec["classes"] == ["red", "white"]
    assert set(np.load(wine.train / "test_y.npy").tolist()) == {"red", "white"}


def test_compile_from_a_training_folder_checks_its_budget(wine: Wine) -> None:
    assert f"accumulator budget: {NETWORK['n_accum_bits']} bits" in wine.compile_out
    report = json.loads((wine.model / "report.json").read_text())
    assert report["n_accum_bits"] == NETWORK["n_accum_bits"]


def test_compiled_model_standardizes_raw_rows_like_the_estimator(wine: Wine) -> None:
    """Regression: the network is trained on standardized rows; a compiled model made by
    ``compile --from`` must standardize on the client too (unscaled columns gave ~50 %)."""
    assert "input standardization" in wine.compile_out
    client = json.loads((wine.model / "client.json").read_text())
    assert client["standardization"] is not None
    estimator = pickle.loads((wine.train / "estimator.pkl").read_bytes())
    x = np.load(wine.train / "test_x.npy")
    compiled = expected_predictions(wine.model, x)
    assert np.mean(compiled == estimator.predict(x)) >= 0.9


def test_compile_from_an_older_folder_falls_back_to_the_estimator(
    wine: Wine, tmp_path: Path
) -> None:
    train = tmp_path / "train"
    shutil.copytree(wine.train, train)
    info = json.loads((train / "train.json").read_text())
    del info["n_accum_bits"]
    (train / "train.json").write_text(json.dumps(info))
    code, out, err = run_cli(
        "compile", "--from", train, "--rounding", "off", "--p-error", "default",
        "--out", tmp_path / "c",
    )  # fmt: skip
    assert code == 0, err
    assert f"accumulator budget: {NETWORK['n_accum_bits']} bits" in out
    assert "estimator.pkl (older folder)" in out
    code, out, err = run_cli(
        "compile", "--from", train, "--rounding", "off", "--p-error", "default",
        "--n-accum-bits", "9", "--out", tmp_path / "d",
    )  # fmt: skip
    assert code == 0, err
    assert "accumulator budget" not in out
    assert json.loads((tmp_path / "d/report.json").read_text())["n_accum_bits"] == 9


def class_probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """What ``decrypt --proba`` gives for rows ``x`` (the integer program; bit-exact models)."""
    from fheqnn.compiler.serialize import program_from_dict
    from fheqnn.contract import ClientContract, softmax
    from fheqnn.runtime.artifacts import open_model_folder

    folder = open_model_folder(model_dir)
    program = program_from_dict(folder.read_json("program.json"))
    contract = ClientContract.from_dict(folder.read_json("client.json"))
    return softmax(contract.dequantize(program.run_integer(contract.quantize(x))))


def predict_colour(wine: Wine, data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``predict`` on a CSV that still holds the ``colour`` column; its standard output."""
    code = main([
        "predict", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
        "--target", "colour", "--quiet",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    return out


@pytest.mark.encrypted
def test_predict_prints_the_string_labels(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = wine_rows(3, seed=1)
    data = wine_csv(tmp_path / "new.csv", x, y)  # the target column is still there
    out = predict_colour(wine, data, capsys)
    expected = expected_predictions(wine.model, x)
    assert set(expected) <= {"red", "white"}
    assert np.array2string(expected) in out
    assert f"accuracy (encrypted): {np.mean(expected == y):.4f}" in out


def test_the_compiled_model_knows_its_columns_by_name(wine: Wine) -> None:
    client = json.loads((wine.model / "client.json").read_text())
    assert client["feature_names"] == ["alcohol", "sulphates", "noise"]


@pytest.mark.encrypted
def test_predict_finds_columns_by_name_when_the_header_order_differs(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Until session 6 columns were taken by position only: a file whose columns came in another
    # order gave wrong predictions without a word (found by a new-user trial).
    x, y = wine_rows(12, seed=2)
    lines = ["colour,noise,alcohol,sulphates"] + [
        f"{label},{row[2]:.3f},{row[0]:.1f},{row[1]:.4f}" for row, label in zip(x, y, strict=True)
    ]
    data = tmp_path / "shuffled.csv"
    data.write_text("\n".join(lines) + "\n")
    out = predict_colour(wine, data, capsys)
    assert "columns matched to the model's features by name" in out
    # The rows as written in the file (rounded like the CSV), in the model's order.
    in_order = np.column_stack([np.round(x[:, 0], 1), np.round(x[:, 1], 4), np.round(x[:, 2], 3)])
    assert np.array2string(expected_predictions(wine.model, in_order)) in out
    # This tiny network answers "white" to most rows, so labels could hide a wrong order: the
    # class probabilities of the split path (encrypt, run, decrypt; bit-exact here) cannot.
    model, keys = str(wine.model), str(wine.keys)
    assert main(["encrypt", model, "--keys", keys, "--input", str(data), "--target", "colour",
                 "--out", str(tmp_path / "in.bin")]) == 0  # fmt: skip
    assert main(["run", model, "--evaluation-keys", f"{keys}/evaluation.keys", "--input",
                 str(tmp_path / "in.bin"), "--out", str(tmp_path / "out.bin")]) == 0  # fmt: skip
    assert main(["decrypt", model, "--keys", keys, "--input", str(tmp_path / "out.bin"),
                 "--proba", "--out", str(tmp_path / "proba.npy")]) == 0  # fmt: skip
    proba = np.load(tmp_path / "proba.npy")
    np.testing.assert_allclose(proba, class_probabilities(wine.model, in_order))
    # Taken by position, these columns would also be far outside the calibration range.
    with pytest.warns(InputRangeWarning, match="'alcohol' \\(the model's column 0\\) is -?[0-9]"):
        by_position = class_probabilities(wine.model, in_order[:, [2, 0, 1]])
    assert not np.allclose(proba, by_position)


@pytest.mark.encrypted
def test_a_column_in_other_units_is_warned_about_once(wine: Wine, tmp_path: Path) -> None:
    """The input quantizer clips what lies beyond its range: sulphates given in g/L where the
    model learned kg/L would be answered as if they were the largest it saw, without a word.
    ``predict`` encrypts in chunks; the file is checked once, as a whole."""
    x, y = wine_rows(5, seed=5)
    args = ("--keys", wine.keys, "--target", "colour", "--input")
    code, _, err = run_cli("encrypt", wine.model, *args, wine_csv(tmp_path / "ok.csv", x, y),
                           "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    assert "warning" not in err
    x[:, 1] *= 1000.0
    code, out, err = run_cli("predict", wine.model, *args, wine_csv(tmp_path / "gl.csv", x, y),
                             "--quiet")  # fmt: skip
    assert code == 0, err  # a warning, not a refusal: extrapolation can be meant
    assert err.count("warning:") == 1, err
    assert err.startswith("warning: 5 of 5 rows hold values far outside the range of the "
                          "calibration rows")  # fmt: skip
    assert "row 0, feature 'sulphates' (the model's column 1) is " in err
    assert "check the columns' units and order" in err and "warning" not in out
    x[:, 1] /= 1000.0 * 1000.0  # now in tonnes per litre: just below the range, every row
    code, _, err = run_cli("encrypt", wine.model, *args, wine_csv(tmp_path / "t.csv", x, y),
                           "--out", tmp_path / "b")  # fmt: skip
    assert code == 0, err
    assert err.startswith("warning: 5 of 5 rows hold values far outside the range of the "
                          "calibration rows")  # fmt: skip
    assert "under 1/5 of a positive feature's least value): row 0, feature 'sulphates'" in err
    assert (tmp_path / "b").is_file()


def test_compile_reads_a_calibration_csv_by_name(wine: Wine, tmp_path: Path) -> None:
    x, _ = wine_rows(60, seed=4)
    shuffled = tmp_path / "cal.csv"
    shuffled.write_text("noise,alcohol,sulphates\n" + "".join(f"{r[2]},{r[0]},{r[1]}\n" for r in x))
    code, out, err = run_cli(
        "compile", "--from", wine.train, "--calibration", shuffled, "--rounding", "off",
        "--p-error", "default", "--out", tmp_path / "c",
    )  # fmt: skip
    assert code == 0, err
    assert "cal.csv: columns matched to the model's features by name" in out
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("a,b,c\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in x))
    code, _, err = run_cli(
        "compile", "--from", wine.train, "--calibration", renamed, "--out", tmp_path / "d"
    )
    assert code == 2 and "missing ['alcohol', 'sulphates', 'noise']" in err
    assert not (tmp_path / "d").exists()


def test_a_header_naming_other_columns_is_refused(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, _ = wine_rows(3, seed=3)
    data = tmp_path / "renamed.csv"
    data.write_text("alcohol,sulfates,noise\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in x))
    before = snapshot(tmp_path, wine.model, wine.keys)
    for command in (
        ["encrypt", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
         "--out", str(tmp_path / "in.bin")],
        ["predict", str(wine.model), "--keys", str(wine.keys), "--input", str(data), "--quiet"],
    ):  # fmt: skip
        code = main(command)
        assert_input_error(capsys, code, "missing ['sulphates']", "not in the model ['sulfates']")
    assert snapshot(tmp_path, wine.model, wine.keys) == before
    # Without a header, columns go by position, as before.
    data.write_text("".join(f"{r[0]},{r[1]},{r[2]}\n" for r in x))
    code = main(["encrypt", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert code == 0


def test_inference_csv_with_the_target_column_needs_it_named(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = wine_csv(tmp_path / "new.csv", *wine_rows(3, seed=1))
    before = snapshot(tmp_path, wine.model, wine.keys)
    code = main(["encrypt", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert_input_error(
        capsys, code, "new.csv", "4 features per row, expected 3",
        "the model has no column 'colour': if it holds the labels, drop it with --target colour",
    )  # fmt: skip
    assert snapshot(tmp_path, wine.model, wine.keys) == before
    code = main(["encrypt", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
                 "--target", "colour", "--rows", "1",
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert code == 0
    assert "encrypting 1 row " in capsys.readouterr().out


def test_predict_with_a_wrong_label_count(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "labels.csv").write_text("red\n")
    before = snapshot(tmp_path, wine.model, wine.keys)
    code = main([
        "predict", str(wine.model), "--keys", str(wine.keys),
        "--input", str(wine.train / "test_x.npy"), "--labels", str(tmp_path / "labels.csv"),
        "--quiet",
    ])  # fmt: skip
    assert_input_error(capsys, code, "1 labels", "30 rows", "one label per row")
    assert snapshot(tmp_path, wine.model, wine.keys) == before


def test_an_input_file_too_large_for_the_model_is_refused_unread(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "huge.csv"
    with open(data, "wb") as handle:  # sparse: no disk used
        handle.truncate(inference_byte_limit(3) + 1)
    before = snapshot(wine.model, wine.keys)
    code = main(["encrypt", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
                 "--out", str(tmp_path / "in.bin")])  # fmt: skip
    assert_input_error(capsys, code, "huge.csv", "bytes allowed")
    assert snapshot(wine.model, wine.keys) == before
    assert not (tmp_path / "in.bin").exists()


@pytest.mark.parametrize("command", ["encrypt", "predict", "demo"])
@pytest.mark.parametrize("rows", ["0", "-1", "two"])
def test_rows_must_be_at_least_one(
    command: str, rows: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "encrypt": ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--out", "o"],
        "predict": ["predict", "m", "--keys", "k", "--input", "x.npy"],
        "demo": ["demo"],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--rows", rows])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--rows" in err and ">= 1" in err and rows in err


# ----------------------------------------------------------------------------- bad training files

GOOD = [HEADER] + [f"{900 + 10 * i},0.05,0.1,{'red' if i % 2 else 'white'}" for i in range(12)]


def lines_with(row: int, text: str) -> str:
    """GOOD with data row ``row`` (0-based) replaced: the file's line ``row + 2``."""
    lines = list(GOOD)
    lines[row + 1] = text
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "missing-value": (lines_with(3, "930,,0.1,red"), [], ["line 5", "'sulphates'", "missing"]),
    "NA": (lines_with(0, "NA,0.05,0.1,red"), [], ["line 2", "'alcohol'", "'NA'"]),
    "ragged": (lines_with(6, "960,0.05,red"), [], ["line 8", "3 fields, expected 4"]),
    "non-numeric": (
        lines_with(2, "920,low,0.1,red"), [], ["line 4", "'sulphates'", "'low' is not a number"]
    ),
    "single-class": (
        "\n".join([HEADER] + ["1,2,3,red"] * 8) + "\n", [], ["single class 'red'", "2 classes"]
    ),
    "one-row": (HEADER + "\n1,2,3,red\n", [], ["single class 'red' in its only row"]),
    "too-few-rows": (
        HEADER + "\n1,2,3,red\n1,2,3,white\n2,2,3,red\n2,2,3,white\n", [], ["needs at least 8"]
    ),
    "empty": ("", [], ["is empty"]),
    "header-only": (HEADER + "\n", [], ["no data rows"]),
    "unknown-target": ("\n".join(GOOD) + "\n", ["--target", "color"], ["did you mean 'colour'"]),
    "regressor-strings": ("\n".join(GOOD) + "\n", ["--task", "regressor"], ["needs numbers"]),
    "target-and-labels": (
        "\n".join(GOOD) + "\n", ["--target", "colour", "--labels", "{tmp}/y.npy"], ["not both"]
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_training_csv(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, extra, needles = BAD_FILES[case]
    data = tmp_path / "wine.csv"
    data.write_text(text)
    np.save(tmp_path / "y.npy", np.zeros(12))
    before = snapshot(tmp_path)
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path) for a in extra]
    code = main(["train", "--data", str(data), *args, *NETWORK_ARGS, "--out", str(out)])
    assert_input_error(capsys, code, *needles)
    assert snapshot(tmp_path) == before
    assert not out.exists()


def test_non_utf8_training_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "wine.csv"
    data.write_bytes(lines_with(4, "940,0.05,0.1,ros\xe9").encode("latin-1"))
    before = snapshot(tmp_path)
    code = main(["train", "--data", str(data), *NETWORK_ARGS, "--out", str(tmp_path / "run")])
    assert_input_error(capsys, code, "wine.csv", "line 6", "byte 0xe9", "not UTF-8")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "needles"),
    [
        ((12,), (12,), ["shape (12,)", "2-D", "--labels"]),
        ((12, 3), (12, 2), ["shape (12, 2)", "one label per row"]),
        ((12, 3), (11,), ["12 data rows", "11 labels"]),
    ],
    ids=["1-D-features", "2-D-labels", "label-count"],
)
def test_bad_npy_training_files(
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=x_shape))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, size=y_shape))
    before = snapshot(tmp_path)
    code = main([
        "train", "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
        *NETWORK_ARGS, "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    assert_input_error(capsys, code, *needles)
    assert snapshot(tmp_path) == before


def test_train_with_a_named_target_and_numeric_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    quality = np.where(x[:, 0] > 0, 7, 3)
    lines = ["a,quality,b"] + [
        f"{r[0]:.4f},{q},{r[1]:.4f}" for r, q in zip(x, quality, strict=True)
    ]
    data = tmp_path / "q.csv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "train", "--data", data, "--target", "quality", *NETWORK_ARGS, "--out", out
    )
    assert code == 0, err
    assert "x 2 features" in stdout
    spec = json.loads((out / "output_spec.json").read_text())
    assert spec["classes"] == [3, 7]  # integers, as in the file
    assert np.load(out / "test_y.npy").dtype == np.int64


@pytest.mark.slow
@pytest.mark.encrypted
def test_predict_writes_every_prediction_to_a_csv_or_npy_file(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Printed, more than 200 predictions are cut to the first and last 3 (numpy's summary):
    before ``--out`` the encrypted answers for a user's file were computed and thrown away.
    (The display threshold is lowered to 8 here, to keep the encrypted runs short.)"""
    monkeypatch.setattr("fheqnn.cli.outputs.PRINTED_PREDICTIONS", 8)
    x, y = wine_rows(12, seed=6)
    data = wine_csv(tmp_path / "many.csv", x, y)
    in_file = as_written(x)
    expected = expected_predictions(wine.model, in_file)
    out = predict_colour(wine, data, capsys)
    assert "..." in out
    assert "(the first and last 3 of 12 rows; --out FILE.csv writes them all)" in out
    table = tmp_path / "preds.csv"
    args = ["predict", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
            "--target", "colour", "--quiet", "--out", str(table)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {table} (12 rows)" in out and "'red'" not in out
    lines = table.read_text().splitlines()
    assert lines[0] == "prediction"
    assert lines[1:] == expected.tolist()
    # Once more: refused without --overwrite; the input, or a CSV that is not ours, never.
    (tmp_path / "mine.csv").write_text("id,score\n1,2\n")
    (tmp_path / "dates.csv").write_text("prediction_date,amount\n2026-01-02,3\n")
    before = snapshot(tmp_path)
    assert_input_error(capsys, main(args), "exists; pass --overwrite")
    for other, needle in [
        (data, "also an input of this command"),
        (tmp_path / "mine.csv", "is not a table of predictions written by fheqnn"),
        (tmp_path / "dates.csv", "is not a table of predictions written by fheqnn"),
        (tmp_path / "preds.txt", "must end in .csv"),
        (tmp_path, "is a folder"),
    ]:
        args[-1] = str(other)
        assert_input_error(capsys, main([*args, "--overwrite"]), needle)
    assert snapshot(tmp_path) == before
    args[-1] = str(tmp_path / "preds.npy")
    assert main([*args, "--rows", "7"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "preds.npy"), expected[:7])
    # A write that fails at the end (a full disk, simulated) does not lose the answers.
    import errno

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fheqnn.fileio.atomic_write_bytes", full_disk)
    args[-1] = str(tmp_path / "again.csv")
    code = main(args)
    printed = capsys.readouterr()
    assert code == 2, printed.err
    assert "No space left on device; the 12 rows of predictions are printed above" in printed.err
    assert np.array2string(expected, threshold=100) in printed.out  # all 12, not cut
    assert not (tmp_path / "again.csv").exists()


@pytest.mark.encrypted
def test_decrypt_writes_class_probabilities_under_the_class_names(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = wine_rows(8, seed=7)
    data = wine_csv(tmp_path / "eight.csv", x, y)
    model, keys = str(wine.model), str(wine.keys)
    assert main(["encrypt", model, "--keys", keys, "--input", str(data), "--target", "colour",
                 "--out", str(tmp_path / "in.bin")]) == 0  # fmt: skip
    assert main(["run", model, "--evaluation-keys", f"{keys}/evaluation.keys", "--input",
                 str(tmp_path / "in.bin"), "--out", str(tmp_path / "out.bin")]) == 0  # fmt: skip
    table = tmp_path / "proba.csv"
    assert main(["decrypt", model, "--keys", keys, "--input", str(tmp_path / "out.bin"),
                 "--proba", "--out", str(table)]) == 0  # fmt: skip
    lines = table.read_text().splitlines()
    assert lines[0] == "proba_red,proba_white"
    in_file = as_written(x)
    written = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(written, class_probabilities(wine.model, in_file))
    # Every digit is kept: the same floats as the array decrypt saves.
    assert main(["decrypt", model, "--keys", keys, "--input", str(tmp_path / "out.bin"),
                 "--proba", "--out", str(tmp_path / "proba.npy")]) == 0  # fmt: skip
    np.testing.assert_array_equal(written, np.load(tmp_path / "proba.npy"))
    # Printed, 8 rows x 2 classes are more values than a (lowered) display threshold of 8:
    # numpy cuts them, and the note says so (it counted rows, not values).
    monkeypatch.setattr("fheqnn.cli.outputs.PRINTED_PREDICTIONS", 8)
    capsys.readouterr()
    assert main(["decrypt", model, "--keys", keys, "--input", str(tmp_path / "out.bin"),
                 "--proba"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "..." in out and "(the first and last 3 of 8 rows;" in out


def test_a_file_with_a_column_too_few_is_told_which_one(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong feature count names the model's columns: those the header lacks (and those it
    has that the model does not), or, without a header, all of them in order."""
    x, y = wine_rows(3, seed=8)
    with_header = tmp_path / "two.csv"
    with_header.write_text("alcohol,acidity,colour\n" + "".join(
        f"{r[0]:.1f},{r[2]:.3f},{label}\n" for r, label in zip(x, y, strict=True)))  # fmt: skip
    no_header = tmp_path / "two.npy"
    np.save(no_header, x[:, :2])
    before = snapshot(tmp_path)
    for data, needle in [
        (with_header, "the header lacks 'sulphates', 'noise'; the model has no column 'acidity'"),
        (no_header, "the model's columns, in order: 'alcohol', 'sulphates', 'noise'"),
    ]:
        code = main(["predict", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
                     *(["--target", "colour"] if data.suffix == ".csv" else []),
                     "--out", str(tmp_path / "p.csv")])  # fmt: skip
        assert_input_error(capsys, code, "2 features per row, expected 3", needle)
    assert snapshot(tmp_path) == before


@pytest.mark.encrypted
def test_an_existing_ciphertext_file_is_replaced_only_with_overwrite(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``encrypt`` and ``run`` replaced an existing ciphertext file without a word (a results
    file can take hours to compute; found by a new-user trial)."""
    data = wine_csv(tmp_path / "two.csv", *wine_rows(2, seed=9))
    model, keys, rows, results = (
        str(wine.model),
        str(wine.keys),
        tmp_path / "in.bin",
        tmp_path / "out.bin",
    )
    encrypt = ["encrypt", model, "--keys", keys, "--input", str(data), "--target", "colour",
               "--out", str(rows)]  # fmt: skip
    run = ["run", model, "--evaluation-keys", f"{keys}/evaluation.keys", "--input", str(rows),
           "--out", str(results)]  # fmt: skip
    assert main(encrypt) == 0 and main(run) == 0
    before = snapshot(tmp_path)
    assert_input_error(capsys, main(encrypt), f"--out {rows} exists; pass --overwrite")
    assert_input_error(capsys, main(run), f"--out {results} exists; pass --overwrite")
    assert snapshot(tmp_path) == before
    assert main([*encrypt, "--overwrite"]) == 0 and main([*run, "--overwrite"]) == 0
    # Fresh randomness: both files were written again.
    assert rows.read_bytes() != before[(str(tmp_path), "in.bin")]
    assert results.read_bytes() != before[(str(tmp_path), "out.bin")]


@pytest.mark.encrypted
def test_predict_copies_a_column_of_row_ids_into_its_table(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Users' files carry keys (a sample id): ``--id`` keeps that column out of the features and
    writes it first in the table, so that predictions join back by key, not by row order."""
    x, y = wine_rows(4, seed=10)
    ids = ['S-1, lot "a"', "S-2", "", "S-4"]  # a comma and quotes, and an empty id
    data = tmp_path / "keyed.csv"
    with open(data, "w", newline="") as handle:
        import csv

        writer = csv.writer(handle)
        writer.writerow(["sample", *HEADER.split(",")])
        for row_id, row, label in zip(ids, x, y, strict=True):
            writer.writerow([row_id, f"{row[0]:.1f}", f"{row[1]:.4f}", f"{row[2]:.3f}", label])
    table = tmp_path / "pred.csv"
    args = ["predict", str(wine.model), "--keys", str(wine.keys), "--input", str(data),
            "--target", "colour", "--quiet", "--out", str(table), "--id", "sample"]  # fmt: skip
    assert main(args) == 0
    with open(table, newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["sample", "prediction"]
    assert [r[0] for r in written[1:]] == ids
    assert [r[1] for r in written[1:]] == expected_predictions(wine.model, as_written(x)).tolist()
    # Ours (a table of predictions with an id column): replaced with --overwrite, by 2 rows.
    assert main([*args, "--overwrite", "--rows", "2"]) == 0
    assert table.read_text().splitlines()[1:] == [
        '"S-1, lot ""a""",' + written[1][1],
        "S-2," + written[2][1],
    ]
    capsys.readouterr()
    before = snapshot(tmp_path)
    for change, needle in [
        ({"--out": None}, "give --out FILE.csv too"),
        ({"--out": str(tmp_path / "p.npy")}, "give --out FILE.csv too"),
        ({"--id": "colour"}, "cannot be both the target and the row ids"),
        ({"--id": "sampel"}, "no column named 'sampel' (did you mean 'sample'?)"),
    ]:
        argv = list(args)
        argv[argv.index(str(table))] = str(tmp_path / "new.csv")
        for flag, value in change.items():
            at = argv.index(flag)
            argv[at : at + 2] = [] if value is None else [flag, value]
        assert_input_error(capsys, main(argv), needle)
    assert snapshot(tmp_path) == before
