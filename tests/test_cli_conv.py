"""The command line with a convolutional network: ``train --model conv`` from image files,
``compile --from`` its folder, and the options that do not apply refused before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fheqnn.cli import main
from test_cli import assert_input_error, snapshot


def cli(*args: object) -> int:
    return main([str(a) for a in args])


CONV_ARGS = ["--model", "conv", "--channels", "2,3", "--epochs", "3", "--seed", "0", "--quiet"]


def _image_files(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    """Raw 6x6 one-channel images (unscaled pixel values) and string labels, as .npy files."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(60, 20, size=(n, 1, 6, 6))
    x[y == 0, :, :, :3] += 100
    x[y == 1, :, :, 3:] += 100
    images, labels = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(images, x)
    np.save(labels, np.array(["left", "right"])[y])
    return images, labels


@pytest.mark.slow
def test_train_a_conv_network_from_image_files_then_compile_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = _image_files(tmp_path)
    out = tmp_path / "run"
    code = cli("train", "--data", images, "--labels", labels, *CONV_ARGS, "--out", out)
    assert code == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "convolutional classifier on 45 images of (1, 6, 6)" in said
    info = json.loads((out / "train.json").read_text())
    assert info["input_shape"] == [1, 6, 6] and info["channels"] == [2, 3]
    assert info["max_active_weights"] == [7, 10, 10]
    assert np.load(out / "calibration.npy").shape == (45, 1, 6, 6)
    circuits = tmp_path / "circuits"
    code = cli("compile", "--from", out, "--p-error", "1e-3", "--out", circuits)
    assert code == 0, capsys.readouterr().err
    assert (circuits / "report.json").is_file()


def test_flat_rows_need_the_image_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _image_files(tmp_path)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.load(images).reshape(60, -1))
    before = snapshot(tmp_path)
    base = ["train", "--data", flat, "--labels", labels, *CONV_ARGS, "--out", tmp_path / "run"]
    assert_input_error(capsys, cli(*base), "--input-shape C,H,W")
    assert_input_error(capsys, cli(*base, "--input-shape", "1,5,6"), "holds 30 values", "36")
    assert snapshot(tmp_path) == before
    assert cli(*base, "--input-shape", "1,6,6") == 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--dataset", "iris"], "iris holds table rows"),
        (["--dataset", "digits", "--multiplier", "2"], "--channels"),
        (["--dataset", "digits", "--task", "regressor"], "trains a classifier"),
    ],
)
def test_options_that_do_not_apply_to_a_conv_network_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    before = snapshot(tmp_path)
    code = cli("train", *extra, *CONV_ARGS, "--out", tmp_path / "run")
    assert_input_error(capsys, code, needle)
    assert snapshot(tmp_path) == before


def test_conv_options_without_model_conv_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli("train", "--dataset", "iris", "--channels", "4", "--out", tmp_path / "run")
    assert_input_error(capsys, code, "add --model conv")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_demo_of_the_conv_network_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    circuits, keys = tmp_path / "circuits", tmp_path / "keys"
    code = cli("demo", "--model", "conv", "--channels", "2,3", "--epochs", "3", "--rows", "1",
               "--circuits", circuits, "--keys", keys, "--quiet")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "data set digits: 1347 training rows, 450 test rows, 1x8x8 images" in said
    assert "at most 7, 10, 10 active weights per filter or neuron" in said
    assert "encrypted" in said and "latency" in said
    assert (circuits / "demo_conv_digits" / "report.json").is_file()
    assert (keys / "demo_conv_digits").is_dir()
