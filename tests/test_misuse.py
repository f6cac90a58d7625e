"""A catalogue of misuse (issue 10): every case gets its exit code or exception, disk unchanged.

One tiny workspace is built per module: two compiled models with a key folder each, a training
folder, data files, ciphertexts, and damaged copies of all of them. Each catalogue case runs a
CLI command in-process (expected: an exit code) or an API call (expected: an exception type),
and the whole workspace is checksummed before and after: nothing on disk may change. Then:
hypothesis fuzzing of the envelope and folder readers, real Ctrl-C on the CLI, stale
temporaries, secret key permissions, a closed output pipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fheqnn.cli import main
from fheqnn.errors import FheqnnError
from fheqnn.model.training_run import write_training_run
from fheqnn.runtime import ArtifactError, EnvelopeError, FheModelClient, FheModelServer
from fheqnn.runtime.envelope import MAGIC, MAGIC_V1, Envelope
from helpers import checksum, tiny_classifier

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def relabel(blob: bytes, **fields: Any) -> bytes:
    """An envelope with header fields changed but the old checksum kept (a careless edit)."""
    pos = len(MAGIC) + 32
    (n,) = struct.unpack_from(">I", blob, pos)
    header = json.loads(blob[pos + 4 : pos + 4 + n])
    header.update(fields)
    new = json.dumps(header, sort_keys=True).encode()
    return blob[:pos] + struct.pack(">I", len(new)) + new + blob[pos + 4 + n :]


def reseal(body: bytes) -> bytes:
    return MAGIC + hashlib.sha256(body).digest() + body


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("misuse")
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=2.0, size=(3, 4))
    labels = rng.integers(0, 3, size=60)
    x = centers[labels] + rng.normal(scale=0.6, size=(60, 4))
    y = np.array(["a", "b", "c"])[labels]
    clf = tiny_classifier(x, y, max_epochs=10)
    # A training folder as 'train' writes it (what compile --from reads).
    run = root / "run"
    run.mkdir()
    write_training_run(run, clf, (x, x[:3], y, y[:3]), {"task": "classifier"})
    clf.compile(x, rounding="off", p_error=None)  # fast, bit-exact: no search under test
    clf.fhe_model_.save(root / "m")
    clf2 = tiny_classifier(x[:, :3], y, max_epochs=5)
    clf2.compile(x[:, :3], rounding="off", p_error=None)
    clf2.fhe_model_.save(root / "m2")
    client = FheModelClient(root / "m")
    client.keygen(root / "k")
    old_umask = os.umask(0)  # keygen must not create a readable secret key whatever the umask
    try:
        client2 = FheModelClient(root / "m2")
        client2.keygen(root / "k2")
    finally:
        os.umask(old_umask)
    server, server2 = FheModelServer(root / "m"), FheModelServer(root / "m2")
    np.save(root / "x.npy", x[:3])
    np.savetxt(root / "x.csv", x[:3], delimiter=",")
    inputs = client.encrypt(x[:3])
    (root / "in.bin").write_bytes(inputs)
    (root / "in_many.bin").write_bytes(client.encrypt(x[:24]))  # a run long enough to interrupt
    (root / "out.bin").write_bytes(server.run(inputs, client.evaluation_keys()))
    inputs2 = client2.encrypt(x[:3, :3])
    (root / "in2.bin").write_bytes(inputs2)
    (root / "out2.bin").write_bytes(server2.run(inputs2, client2.evaluation_keys()))
    (root / "userdir").mkdir()
    (root / "userdir" / "notes.txt").write_text("mine")
    (root / "empty").mkdir()

    bad = root / "bad"
    bad.mkdir()

    def flip(data: bytes, at: int) -> bytes:
        out = bytearray(data)
        out[at] ^= 0x01
        return bytes(out)

    (bad / "flipped_in.bin").write_bytes(flip(inputs, len(inputs) - 7))
    (bad / "fake.npy").write_text("a,b\n1,2\n")  # a CSV under an .npy name
    (bad / "fake.jsonl").write_text("a,b\n1,2\n")
    (bad / "flipped_out.bin").write_bytes(flip((root / "out.bin").read_bytes(), 200))
    evaluation = (root / "k" / "evaluation.keys").read_bytes()
    (bad / "flipped_ek.bin").write_bytes(flip(evaluation, len(evaluation) // 2))
    env = Envelope.from_bytes(inputs, kind="inputs")
    (bad / "relabelled_in.bin").write_bytes(relabel(inputs2, model_id=env.model_id))
    (bad / "relabelled_key.bin").write_bytes(relabel(inputs2, key_id=env.key_id))
    (bad / "v1_in.bin").write_bytes(MAGIC_V1 + inputs[len(MAGIC) + 32 :])
    header = json.dumps(
        {"count": 0, "key_id": env.key_id, "kind": "inputs", "meta": {}, "model_id": env.model_id}
    ).encode()
    (bad / "empty_envelope.bin").write_bytes(reseal(struct.pack(">I", len(header)) + header))
    (bad / "truncated_in.bin").write_bytes(inputs[:-10])
    with open(bad / "huge.bin", "wb") as handle:  # sparse: takes no disk
        handle.write(MAGIC)
        handle.truncate(3 << 30)
    (bad / "nonutf8.json").write_bytes(b'{"classes": ["\xff\xfe"]}')
    (bad / "labels3.npy").write_bytes((root / "x.npy").read_bytes())
    np.save(bad / "labels2.npy", np.array(["a", "b"]))
    np.save(bad / "nan.npy", np.full((2, 4), np.nan))
    np.save(bad / "wide.npy", np.zeros((2, 7)))

    (bad / "dict.pkl").write_bytes(pickle.dumps({"not": "an estimator"}))

    def key_variant(name: str, edit: Any) -> None:
        folder = bad / name
        shutil.copytree(root / "k", folder)
        edit(folder)

    def info_edit(change: Any) -> Any:
        def edit(folder: Path) -> None:
            (folder / "key.json").write_text(
                json.dumps(change(json.loads((folder / "key.json").read_text())))
            )

        return edit

    key_variant("keyjson_list", lambda f: (f / "key.json").write_text("[1, 2]"))
    key_variant("keyjson_binary", lambda f: (f / "key.json").write_bytes(b"\xff\x00\x81"))
    key_variant("keyjson_old", info_edit(lambda d: {k: v for k, v in d.items() if k != "bytes"}))
    key_variant("no_keyjson", lambda f: (f / "key.json").unlink())

    def truncate_secret(folder: Path, rewrite: bool) -> None:
        secret = folder / "secret.keys"
        data = secret.read_bytes()[: secret.stat().st_size // 2]
        secret.write_bytes(data)
        if rewrite:  # checksum and size rewritten to match: only the model's sizes catch it
            info = json.loads((folder / "key.json").read_text())
            info["sha256"]["secret.keys"] = hashlib.sha256(data).hexdigest()
            info["bytes"]["secret.keys"] = len(data)
            (folder / "key.json").write_text(json.dumps(info))

    key_variant("secret_truncated", lambda f: truncate_secret(f, False))
    key_variant("secret_truncated_resealed", lambda f: truncate_secret(f, True))
    key_variant(
        "evaluation_truncated", lambda f: (f / "evaluation.keys").write_bytes(evaluation[:1000])
    )

    def model_variant(name: str, edit: Any) -> None:
        folder = bad / name
        shutil.copytree(root / "m", folder)
        edit(folder)

    model_variant("manifest_list", lambda f: (f / "manifest.json").write_text("[]"))
    model_variant("manifest_binary", lambda f: (f / "manifest.json").write_bytes(b"\x80\x81"))
    model_variant(
        "program_edited",
        lambda f: (f / "program.json").write_text(
            (f / "program.json").read_text().replace('"weight": [[', '"weight": [[1, ', 1)
        ),
    )
    model_variant("report_edited", lambda f: (f / "report.json").write_text("{}"))
    model_variant(
        "client_edited",
        lambda f: (f / "client.json").write_text((f / "client.json").read_text() + " "),
    )
    model_variant("no_server", lambda f: (f / "server.zip").unlink())
    return root


E = EnvelopeError
A = ArtifactError

# (id, command line, expected exit code). Relative paths: the workspace is the current folder.
CLI_CASES: list[tuple[str, list[str], int]] = [
    # --overwrite and destinations: never the input, never another kind, never "." or a parent
    ("compile-out-is-its-input", ["compile", "--from", "run", "--out", "run", "--overwrite"], 2),
    (
        "compile-out-holds-input",
        [
            "compile",
            "--onnx",
            "run/model.onnx",
            "--calibration",
            "x.npy",
            "--out",
            "run",
            "--overwrite",
        ],
        2,
    ),
    ("compile-over-key-folder", ["compile", "--from", "run", "--out", "k", "--overwrite"], 2),
    (
        "compile-over-user-folder",
        ["compile", "--from", "run", "--out", "userdir", "--overwrite"],
        2,
    ),
    ("compile-over-existing-model", ["compile", "--from", "run", "--out", "m"], 2),
    ("compile-out-dot", ["compile", "--from", "run", "--out", "."], 2),
    ("compile-out-dot-overwrite", ["compile", "--from", "run", "--out", ".", "--overwrite"], 2),
    ("compile-out-parent", ["compile", "--from", "run", "--out", "..", "--overwrite"], 2),
    ("compile-out-is-a-file", ["compile", "--from", "run", "--out", "x.npy"], 2),
    ("compile-out-empty", ["compile", "--from", "run", "--out", ""], 2),
    ("compile-readonly-destination", ["compile", "--from", "run", "--out", "/proc/fheqnn"], 2),
    ("keygen-into-its-model", ["keygen", "m", "--keys", "m", "--overwrite"], 2),
    ("keygen-over-other-model", ["keygen", "m", "--keys", "m2", "--overwrite"], 2),
    ("keygen-over-training-run", ["keygen", "m", "--keys", "run", "--overwrite"], 2),
    ("keygen-over-user-folder", ["keygen", "m", "--keys", "userdir", "--overwrite"], 2),
    ("keygen-over-keys-no-overwrite", ["keygen", "m", "--keys", "k"], 2),
    ("keygen-keys-is-a-file", ["keygen", "m", "--keys", "x.npy"], 2),
    ("keygen-into-cwd", ["keygen", "m", "--keys", ".", "--overwrite"], 2),
    ("train-out-is-a-file", ["train", "--dataset", "iris", "--out", "x.npy"], 2),
    ("train-over-model", ["train", "--dataset", "iris", "--out", "m", "--overwrite"], 2),
    ("train-out-dot", ["train", "--dataset", "iris", "--out", "."], 2),
    ("train-readonly-destination", ["train", "--dataset", "iris", "--out", "/sys/fheqnn"], 2),
    ("train-out-holds-data", ["train", "--data", "x.csv", "--out", ".", "--overwrite"], 2),
    # output files
    (
        "encrypt-out-is-input",
        ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--out", "x.npy"],
        2,
    ),
    (
        "encrypt-out-over-user-file",
        ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--out", "x.csv"],
        2,
    ),
    (
        "encrypt-out-is-folder",
        ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--out", "userdir"],
        2,
    ),
    (
        "run-out-is-input",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "in.bin",
            "--out",
            "in.bin",
        ],
        2,
    ),
    # an existing ciphertext file only with --overwrite (results can take hours to compute)
    (
        "encrypt-over-existing-ciphertext",
        ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--out", "in.bin"],
        2,
    ),
    (
        "run-over-existing-result",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "in.bin",
            "--out",
            "out.bin",
        ],
        2,
    ),
    (
        "predict-out-over-user-csv",
        ["predict", "m", "--keys", "k", "--input", "x.npy", "--out", "x.csv", "--overwrite"],
        2,
    ),
    (
        "predict-out-wrong-suffix",
        ["predict", "m", "--keys", "k", "--input", "x.npy", "--out", "p.txt"],
        2,
    ),
    (
        "decrypt-csv-over-user-csv",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "x.csv", "--overwrite"],
        2,
    ),
    (
        "decrypt-out-is-folder",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "empty"],
        2,
    ),
    # single-file outputs never destroy anything (found by a new-user trial in session 6:
    # decrypt --out replaced secret.keys, a model's client.json and a user's CSV)
    (
        "decrypt-out-is-the-secret-key",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "k/secret.keys"],
        2,
    ),
    (
        "decrypt-out-is-a-model-file",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "m/client.json"],
        2,
    ),
    (
        "decrypt-out-new-file-in-the-model",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "m/new.npy"],
        2,
    ),
    (
        "decrypt-out-in-another-key-folder",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "k2/new.npy"],
        2,
    ),
    (
        "decrypt-out-user-csv",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "x.csv"],
        2,
    ),
    (
        "decrypt-out-existing-npy-no-overwrite",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "x.npy"],
        2,
    ),
    (
        "decrypt-overwrite-a-non-npy",
        [
            "decrypt",
            "m",
            "--keys",
            "k",
            "--input",
            "out.bin",
            "--out",
            "bad/fake.npy",
            "--overwrite",
        ],
        2,
    ),
    ("export-out-user-csv", ["export", "--model", "run/estimator.pkl", "--out", "x.csv"], 2),
    ("export-out-in-model", ["export", "--model", "run/estimator.pkl", "--out", "m/new.onnx"], 2),
    (
        "export-out-existing-no-overwrite",
        ["export", "--model", "run/estimator.pkl", "--out", "run/model.onnx"],
        2,
    ),
    (
        "decrypt-out-deep-inside-another-model",
        ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--out", "m2/sub/new.npy"],
        2,
    ),
    (
        "decrypt-out-in-a-training-run",
        [
            "decrypt",
            "m",
            "--keys",
            "k",
            "--input",
            "out.bin",
            "--out",
            "run/calibration.npy",
            "--overwrite",
        ],
        2,
    ),
    (
        "export-out-in-a-training-run",
        ["export", "--model", "run/estimator.pkl", "--out", "run/x.onnx"],
        2,
    ),
    ("bench-out-secret-key", ["bench", "--out", "k/secret.keys", "--report-only"], 2),
    ("bench-out-user-csv-renamed", ["bench", "--out", "bad/fake.jsonl", "--report-only"], 2),
    # keys: other model, malformed, truncated, missing
    (
        "encrypt-keys-of-other-model",
        ["encrypt", "m", "--keys", "k2", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "keyjson-a-list",
        ["encrypt", "m", "--keys", "bad/keyjson_list", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "keyjson-not-utf8",
        ["encrypt", "m", "--keys", "bad/keyjson_binary", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "keyjson-older-format",
        ["encrypt", "m", "--keys", "bad/keyjson_old", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "keyjson-missing",
        ["encrypt", "m", "--keys", "bad/no_keyjson", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "secret-truncated",
        ["encrypt", "m", "--keys", "bad/secret_truncated", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "secret-truncated-resealed",
        [
            "encrypt",
            "m",
            "--keys",
            "bad/secret_truncated_resealed",
            "--input",
            "x.npy",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "keys-folder-missing",
        ["encrypt", "m", "--keys", "nowhere", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    (
        "keys-folder-is-model",
        ["encrypt", "m", "--keys", "m", "--input", "x.npy", "--out", "new.bin"],
        2,
    ),
    # ciphertexts: flipped, relabelled, other model, old format, empty, truncated, oversized
    (
        "run-flipped-input",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/flipped_in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-relabelled-model",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/relabelled_in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-relabelled-key",
        [
            "run",
            "m2",
            "--evaluation-keys",
            "k2/evaluation.keys",
            "--input",
            "bad/relabelled_key.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-input-of-other-model",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "in2.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-format-1-envelope",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/v1_in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-envelope-without-payload",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/empty_envelope.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-truncated-input",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/truncated_in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-not-an-envelope",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "x.npy",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-oversized-input",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "bad/huge.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-input-missing",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "nothing.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-input-is-folder",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "userdir",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-flipped-evaluation-keys",
        [
            "run",
            "m",
            "--evaluation-keys",
            "bad/flipped_ek.bin",
            "--input",
            "in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-evaluation-keys-are-inputs",
        ["run", "m", "--evaluation-keys", "in.bin", "--input", "in.bin", "--out", "new.bin"],
        2,
    ),
    (
        "run-evaluation-keys-of-other-model",
        [
            "run",
            "m",
            "--evaluation-keys",
            "k2/evaluation.keys",
            "--input",
            "in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    (
        "run-oversized-evaluation-keys",
        ["run", "m", "--evaluation-keys", "bad/huge.bin", "--input", "in.bin", "--out", "new.bin"],
        2,
    ),
    (
        "run-model-without-server",
        [
            "run",
            "bad/no_server",
            "--evaluation-keys",
            "k/evaluation.keys",
            "--input",
            "in.bin",
            "--out",
            "new.bin",
        ],
        2,
    ),
    ("decrypt-inputs-not-results", ["decrypt", "m", "--keys", "k", "--input", "in.bin"], 2),
    (
        "decrypt-flipped-results",
        ["decrypt", "m", "--keys", "k", "--input", "bad/flipped_out.bin"],
        2,
    ),
    ("decrypt-results-of-other-model", ["decrypt", "m", "--keys", "k", "--input", "out2.bin"], 2),
    ("decrypt-with-other-keys", ["decrypt", "m2", "--keys", "k2", "--input", "out.bin"], 2),
    # compiled-model folders
    ("report-manifest-a-list", ["report", "bad/manifest_list"], 2),
    ("report-manifest-not-utf8", ["report", "bad/manifest_binary"], 2),
    ("report-program-edited", ["report", "bad/program_edited"], 2),
    ("report-report-edited", ["report", "bad/report_edited"], 2),
    ("report-missing-folder", ["report", "nowhere"], 2),
    ("report-of-a-key-folder", ["report", "k"], 2),
    ("keygen-client-json-edited", ["keygen", "bad/client_edited", "--keys", "newkeys"], 2),
    (
        "predict-model-without-server",
        ["predict", "bad/no_server", "--keys", "k", "--input", "x.npy"],
        2,
    ),
    # compile and export inputs
    (
        "compile-onnx-not-onnx",
        ["compile", "--onnx", "x.npy", "--calibration", "x.npy", "--out", "new"],
        2,
    ),
    ("compile-p-error-2", ["compile", "--from", "run", "--out", "new", "--p-error", "2"], 2),
    (
        "compile-output-spec-not-utf8",
        ["compile", "--from", "run", "--output-spec", "bad/nonutf8.json", "--out", "new"],
        2,
    ),
    ("compile-from-missing", ["compile", "--from", "nowhere", "--out", "new"], 2),
    ("export-not-a-pickle", ["export", "--model", "x.npy", "--out", "new.onnx"], 2),
    ("export-pickle-not-estimator", ["export", "--model", "bad/dict.pkl", "--out", "new.onnx"], 2),
    ("export-out-is-folder", ["export", "--model", "bad/dict.pkl", "--out", "userdir"], 2),
    # data
    (
        "predict-label-count",
        [
            "predict",
            "m",
            "--keys",
            "k",
            "--input",
            "x.npy",
            "--labels",
            "bad/labels2.npy",
            "--quiet",
        ],
        2,
    ),
    (
        "encrypt-nan",
        ["encrypt", "m", "--keys", "k", "--input", "bad/nan.npy", "--out", "new.bin"],
        2,
    ),
    (
        "encrypt-wrong-feature-count",
        ["encrypt", "m", "--keys", "k", "--input", "bad/wide.npy", "--out", "new.bin"],
        2,
    ),
    (
        "encrypt-rows-0",
        ["encrypt", "m", "--keys", "k", "--input", "x.npy", "--rows", "0", "--out", "new.bin"],
        2,
    ),
    ("compile-rounding-abc", ["compile", "--from", "run", "--rounding", "abc", "--out", "new"], 2),
    ("keygen-without-keys-option", ["keygen", "m"], 2),
    # accepted (nothing written)
    ("report-ok", ["report", "m"], 0),
    ("report-json-ok", ["report", "m", "--json"], 0),
    ("decrypt-ok", ["decrypt", "m", "--keys", "k", "--input", "out.bin"], 0),
    ("decrypt-proba-ok", ["decrypt", "m", "--keys", "k", "--input", "out.bin", "--proba"], 0),
]


def _api_cases() -> list[tuple[str, Any, type[BaseException]]]:
    from fheqnn.compiler.api import compile_onnx
    from fheqnn.errors import InvalidInputError, InvalidModelError, InvalidParameterError
    from fheqnn.runtime.artifacts import (
        KEY_FOLDER,
        check_destination,
        open_model_folder,
        write_folder_atomically,
    )

    def x(root: Path) -> np.ndarray:
        return np.load(root / "x.npy")

    return [
        ("envelope-empty-bytes", lambda r: Envelope.from_bytes(b"", kind="inputs"), E),
        ("envelope-str", lambda r: Envelope.from_bytes("abc", kind="inputs"), E),
        ("envelope-no-payload", lambda r: Envelope("inputs", "m", "k", ()).to_bytes(), E),
        ("envelope-empty-payload", lambda r: Envelope("inputs", "m", "k", (b"",)).to_bytes(), E),
        ("envelope-bad-kind", lambda r: Envelope("secrets", "m", "k", (b"x",)).to_bytes(), E),
        (
            "envelope-bad-meta",
            lambda r: Envelope("inputs", "m", "k", (b"x",), {"a": {1, 2}}).to_bytes(),
            E,
        ),
        (
            "compile-onnx-bytes-garbage",
            lambda r: compile_onnx(b"not onnx", x(r)),
            InvalidModelError,
        ),
        ("compile-onnx-int", lambda r: compile_onnx(3, x(r)), InvalidModelError),
        (
            "compile-p-error-abc",
            lambda r: compile_onnx(r / "run" / "model.onnx", x(r), p_error="abc"),
            InvalidParameterError,
        ),
        ("encrypt-without-keys", lambda r: FheModelClient(r / "m").encrypt(x(r)), A),
        (
            "encrypt-nan-api",
            lambda r: FheModelClient(r / "m", r / "k").encrypt(np.full((1, 4), np.nan)),
            InvalidInputError,
        ),
        ("client-with-other-keys", lambda r: FheModelClient(r / "m", r / "k2"), A),
        (
            "client-evaluation-keys-truncated",
            lambda r: FheModelClient(r / "m", r / "bad" / "evaluation_truncated").evaluation_keys(),
            A,
        ),
        ("server-run-junk", lambda r: FheModelServer(r / "m").run(b"junk"), E),
        (
            "server-register-inputs",
            lambda r: FheModelServer(r / "m").register_evaluation_keys((r / "in.bin").read_bytes()),
            E,
        ),
        (
            "server-run-without-keys",
            lambda r: FheModelServer(r / "m").run((r / "in.bin").read_bytes()),
            E,
        ),
        (
            "client-decrypt-inputs",
            lambda r: FheModelClient(r / "m", r / "k").decrypt((r / "in.bin").read_bytes()),
            E,
        ),
        ("open-key-folder-as-model", lambda r: open_model_folder(r / "k"), A),
        ("check-destination-cwd", lambda r: check_destination(Path(".")), A),
        (
            "overwrite-model-with-keys",
            lambda r: write_folder_atomically(
                r / "m", lambda f: None, overwrite=True, kind=KEY_FOLDER
            ),
            A,
        ),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize(
    ("argv", "expected"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_misuse(
    ws: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: int
) -> None:
    monkeypatch.chdir(ws)
    before = checksum(ws)
    code, out, err = cli(*argv)
    assert code == expected, (out, err)
    assert checksum(ws) == before
    if expected == 2:
        assert "Traceback" not in err and err.strip(), err
        assert "unexpected error" not in err


@pytest.mark.parametrize(
    ("call", "expected"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_api_misuse(
    ws: Path, monkeypatch: pytest.MonkeyPatch, call: Any, expected: type[BaseException]
) -> None:
    monkeypatch.chdir(ws)
    before = checksum(ws)
    with pytest.raises(expected) as info:
        call(ws)
    assert isinstance(info.value, FheqnnError) and isinstance(info.value, ValueError)
    assert checksum(ws) == before


def test_catalogue_size() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 60


def test_messages_name_the_problem(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)
    _, _, err = cli("compile", "--from", "run", "--out", "run", "--overwrite")
    assert "input of this command" in err
    _, _, err = cli("keygen", "m", "--keys", "m2", "--overwrite")
    assert "holds a compiled model, not a key folder" in err
    _, _, err = cli(
        "run",
        "m",
        "--evaluation-keys",
        "k/evaluation.keys",
        "--input",
        "bad/flipped_in.bin",
        "--out",
        "new.bin",
    )
    assert "checksum" in err
    _, _, err = cli(
        "encrypt",
        "m",
        "--keys",
        "bad/secret_truncated_resealed",
        "--input",
        "x.npy",
        "--out",
        "new.bin",
    )
    assert "this model's keys take" in err
    _, out, _ = cli("report", "m")
    assert "as generated and sent to a server" in out and "expanded on the server" in out


def test_keygen_creates_owner_only_secret_whatever_the_umask(ws: Path) -> None:
    # k2 was generated with umask 0.
    assert (ws / "k2" / "secret.keys").stat().st_mode & 0o777 == 0o600
    assert (ws / "k2").stat().st_mode & 0o777 == 0o700


def test_readable_secret_key_warns(
    ws: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "k"
    shutil.copytree(ws / "k", keys)
    os.chmod(keys / "secret.keys", 0o644)
    with caplog.at_level("WARNING", logger="fheqnn.runtime.client"):
        FheModelClient(ws / "m", keys)
    assert "readable by other users" in caplog.text
    caplog.clear()
    os.chmod(keys / "secret.keys", 0o600)
    with caplog.at_level("WARNING", logger="fheqnn.runtime.client"):
        FheModelClient(ws / "m", keys)
    assert "readable by other users" not in caplog.text


def test_real_key_size_matches_the_report(ws: Path) -> None:
    sizes = FheModelClient(ws / "m").key_sizes()
    actual = (ws / "k" / "evaluation.keys").stat().st_size
    assert sizes.evaluation <= actual <= sizes.evaluation + 4096


# ----------------------------------------------------------------------------- stale temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_cleaned_only_when_their_writer_is_gone(tmp_path: Path) -> None:
    from fheqnn.runtime.artifacts import write_folder_atomically

    target = tmp_path / "keys"
    dead = _dead_pid()
    stale = tmp_path / f".keys.tmp-{dead}-abcd1234"
    stale.mkdir()
    (stale / "secret.keys").write_bytes(b"partial")
    live = tmp_path / f".keys.tmp-{os.getpid()}-efgh5678"  # a writer still at work (us)
    live.mkdir()
    other = tmp_path / ".other.tmp-1-abcd1234"  # another destination's: not ours to judge
    other.mkdir()
    write_folder_atomically(target, lambda f: (f / "a").write_text("x"))
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert (target / "a").read_text() == "x"


def test_a_folder_moved_aside_by_a_killed_writer_is_restored(tmp_path: Path) -> None:
    from fheqnn.fileio import clean_stale

    target = tmp_path / "m"
    aside = tmp_path / f".m.old-{_dead_pid()}-123"
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    clean_stale(target)
    assert (target / "manifest.json").read_text() == "{}"
    assert not aside.exists()


# ----------------------------------------------------------------------------- processes


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-m", "fheqnn.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _interrupt_after(proc: subprocess.Popen[bytes], marker: bytes, delay: float) -> tuple:
    seen = b""
    assert proc.stdout is not None
    while marker not in seen:
        char = proc.stdout.read(1)
        if not char:
            break
        seen += char
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (seen + out).decode(), err.decode()


@pytest.mark.parametrize(
    ("step", "args", "marker", "made"),
    [
        # Training: 3 s after it starts the loop is running (5000 epochs of iris take ~1 min);
        # skorch swallows Ctrl-C inside its loop, so this once saved a half-trained model and
        # exited 0.
        pytest.param(
            "train",
            [
                "train",
                "--dataset",
                "iris",
                "--n-layers",
                "2",
                "--multiplier",
                "1",
                "--epochs",
                "5000",
                "--quiet",
                "--out",
                "newrun",
            ],
            b"training a",
            "newrun",
            marks=pytest.mark.slow,  # ~7 s; tests/test_estimators.py covers Ctrl-C in fit
        ),
        ("keygen", ["keygen", "m", "--keys", "newkeys"], b"generating keys", "newkeys"),
        (
            "run",
            [
                "run",
                "m",
                "--evaluation-keys",
                "k/evaluation.keys",
                "--input",
                "in_many.bin",
                "--out",
                "new.bin",
            ],
            b"running on",
            "new.bin",
        ),
        ("compile", ["compile", "--from", "run", "--out", "newmodel"], b"compiling", "newmodel"),
    ],
)
def test_ctrl_c_exits_130_and_leaves_nothing(
    ws: Path, step: str, args: list[str], marker: bytes, made: str
) -> None:
    before = checksum(ws)
    code, out, err = _interrupt_after(_start(args, ws), marker, 3.0 if step == "train" else 0.3)
    if code == 0:  # the step finished before the signal arrived: nothing to judge, undo
        target = ws / made
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        pytest.skip(f"{step} ended before Ctrl-C")
    assert code == 130, (out, err)
    assert err.strip() == "fheqnn: interrupted", err
    assert "Traceback" not in err and "Segmentation" not in out + err
    assert checksum(ws) == before  # no partial folder or file, no stale temporary


def test_closed_output_pipe_exits_quietly(ws: Path) -> None:
    proc = _start(["report", "m"], ws)
    assert proc.stdout is not None
    proc.stdout.close()  # like '| head -1' after its line
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err


# ----------------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def small_envelope() -> bytes:
    return Envelope(
        "inputs", "m" * 32, "k" * 32, (b"abc" * 10, b"\x00\x01"), {"n_rows": 2}
    ).to_bytes()


def _envelope_or_error(read: Any) -> Any:
    try:
        return read()
    except FheqnnError as exc:
        return f"{type(exc).__name__}: {exc}"


@FUZZ
@given(data=st.data())
def test_fuzz_envelope_reader(small_envelope: bytes, data: st.DataObject, tmp_path: Path) -> None:
    blob = bytearray(small_envelope)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "reseal-flip"]))
        at = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del blob[at:]
        elif op == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "reseal-flip" and len(blob) > len(MAGIC) + 32:
            body = bytearray(blob[len(MAGIC) + 32 :])
            body[at % len(body)] ^= 0xFF
            blob = bytearray(reseal(bytes(body)))
    # The file reader (request bodies of the service) takes the same decisions, word for word.
    (tmp_path / "envelope").write_bytes(blob)
    from_file = _envelope_or_error(lambda: Envelope.from_file(tmp_path / "envelope", kind="inputs"))
    assert from_file == _envelope_or_error(lambda: Envelope.from_bytes(bytes(blob), kind="inputs"))
    if not isinstance(from_file, Envelope):
        return
    assert bytes(blob) == small_envelope or from_file.to_bytes() == bytes(blob)


def test_file_reader_refuses_what_the_bytes_reader_refuses(small_envelope, tmp_path) -> None:
    body = small_envelope[len(MAGIC) + 32 :]
    cases = {
        r"payload 1: 0 of 2 bytes": reseal(body[:-2]),
        r"payload 1 length missing": reseal(body[:-10]),
        r"1 unexpected trailing bytes": reseal(body + b"x"),
        r"malformed header \(length 4294967295\)": reseal(b"\xff" * 4 + body[4:]),
        r"wrong magic": b"X" + small_envelope[1:],
        r"checksum": small_envelope[:-1],
    }
    for pattern, blob in cases.items():
        (tmp_path / "envelope").write_bytes(blob)
        from_file = _envelope_or_error(
            lambda: Envelope.from_file(tmp_path / "envelope", kind="inputs")
        )
        assert re.search(pattern, from_file), (pattern, from_file)
        assert from_file == _envelope_or_error(lambda b=blob: Envelope.from_bytes(b, kind="inputs"))
    (tmp_path / "envelope").write_bytes(small_envelope)
    with pytest.raises(EnvelopeError, match=f"{len(small_envelope)} bytes, more than the 99"):
        Envelope.from_file(tmp_path / "envelope", kind="inputs", max_bytes=99)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_envelope_reader_on_any_bytes(raw: bytes) -> None:
    for prefix in (b"", MAGIC, MAGIC + hashlib.sha256(raw).digest()):
        with contextlib.suppress(FheqnnError):
            Envelope.from_bytes(prefix + raw, kind="outputs")


@pytest.fixture(scope="module")
def fuzz_root(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ws / "m", root / "m")
    (root / "k").mkdir()
    for name in ("key.json", "evaluation.keys"):
        shutil.copy(ws / "k" / name, root / "k" / name)
    return root


def _mutate(value: Any, data: st.DataObject) -> Any:
    """Replace one value somewhere in a JSON document by an arbitrary one."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(value[i], data), *value[i + 1 :]]
    return data.draw(json_values)


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_reader(fuzz_root: Path, data: st.DataObject) -> None:
    from fheqnn.runtime.artifacts import open_model_folder

    path = fuzz_root / "m" / "manifest.json"
    original = path.read_bytes()
    try:
        path.write_text(json.dumps(_mutate(json.loads(original), data)))
        with contextlib.suppress(FheqnnError):
            open_model_folder(fuzz_root / "m")
    finally:
        path.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_fuzz_key_json_reader(fuzz_root: Path, data: st.DataObject) -> None:
    from fheqnn.runtime.client import _load_key_info

    path = fuzz_root / "k" / "key.json"
    original = path.read_bytes()
    try:
        path.write_text(json.dumps(_mutate(json.loads(original), data)))
        with contextlib.suppress(FheqnnError):
            _load_key_info(fuzz_root / "k")
    finally:
        path.write_bytes(original)


def test_a_client_contract_with_an_integer_too_large_for_numpy_is_malformed(
    fuzz_root: Path,
) -> None:
    # Found by the fuzzer below under another seed: OverflowError escaped the reader.
    from fheqnn.contract import ClientContract
    from fheqnn.errors import InvalidParameterError

    original = json.loads((fuzz_root / "m" / "client.json").read_text())
    original["output_layer"]["offset"] = 2**63
    with pytest.raises(InvalidParameterError, match="malformed client contract"):
        ClientContract.from_dict(original)


@pytest.mark.parametrize("where", ["zero_point", "offset"])
@pytest.mark.parametrize("value", [2.0**63, 1e19, -1e19, 1.5, float("nan"), float("inf")])
def test_a_client_contract_with_a_float_that_is_no_int64_is_malformed(
    fuzz_root: Path, where: str, value: float
) -> None:
    # Found by the fuzzer below: a float zero point of about 9.2e18 (2**63) made numpy warn (an
    # error in the suite) and wrap around, instead of the reader refusing the contract.
    from fheqnn.contract import ClientContract
    from fheqnn.errors import InvalidParameterError

    original = json.loads((fuzz_root / "m" / "client.json").read_text())
    if where == "offset":
        original["output_layer"]["offset"] = value
    else:
        original["input_quantizer"]["zero_point"] = value
    with pytest.raises(InvalidParameterError, match="malformed client contract"):
        ClientContract.from_dict(original)


@FUZZ
@given(data=st.data())
def test_fuzz_client_contract_reader(fuzz_root: Path, data: st.DataObject) -> None:
    from fheqnn.contract import ClientContract

    original = json.loads((fuzz_root / "m" / "client.json").read_text())
    with contextlib.suppress(FheqnnError):
        ClientContract.from_dict(_mutate(original, data))
