"""Batched circuits: several rows per circuit call (``batch_size``), from options to encryption.

One tiny network is trained once and compiled bit-exact (no rounding, Concrete's default error
probability) for one row per call; the batched models are the same lowered program compiled
again (``with_batch_size``) or compiled from the estimator with ``batch_size``, and must give
the rows what the one-row model gives them, whatever the number of rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fheqnn import (
    CompileOptions,
    EnvelopeError,
    FheModelClient,
    FheModelServer,
    InputRangeWarning,
    InvalidInputError,
    InvalidParameterError,
)
from fheqnn.compiler.options import MAX_BATCH_SIZE
from fheqnn.contract import ClientContract
from fheqnn.runtime.envelope import Envelope
from helpers import blobs, tiny_classifier

BATCH = 3


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(3, 90, 4, 0.6)


@pytest.fixture(scope="module")
def clf(data):
    x, y = data
    return tiny_classifier(x, y, max_epochs=20)


@pytest.fixture(scope="module")
def single(clf, data):
    """The one-row model: bit-exact settings, so simulation equals the interpreter."""
    x, _ = data
    return clf.compile(x, rounding="off", p_error=None).fhe_model_


@pytest.fixture(scope="module")
def batched(single):
    """The same lowered program, compiled for ``BATCH`` rows per call."""
    return single.with_batch_size(BATCH)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("bad", [0, -2, MAX_BATCH_SIZE + 1, 2.0, True, "8", None])
def test_batch_size_is_validated(bad) -> None:
    with pytest.raises(InvalidParameterError, match="batch_size must be") as info:
        CompileOptions(batch_size=bad)
    assert isinstance(info.value, ValueError)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_batch_size_default_and_numpy_ints() -> None:
    assert CompileOptions().batch_size == 1
    options = CompileOptions(batch_size=np.int64(8))
    assert options.batch_size == 8 and type(options.batch_size) is int
    assert options.replace(batch_size=2).batch_size == 2
    with pytest.raises(InvalidParameterError, match=r"batch_size must be in \[1, "):
        options.replace(batch_size=0)


def test_a_bad_batch_size_fails_before_compiling(clf, data, monkeypatch) -> None:
    from fheqnn.compiler import backend

    def no_compile(*args, **kwargs):
        raise AssertionError("Concrete was called")

    monkeypatch.setattr(backend, "compile_circuit", no_compile)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        clf.compile(data[0], batch_size=0)


# ----------------------------------------------------------------------------- compiler


def test_batched_circuit_facts(single, batched) -> None:
    assert single.batch_size == 1 and batched.batch_size == BATCH
    # The circuit itself holds BATCH rows per call; the model reports per row.
    assert batched.circuit.programmable_bootstrap_count == BATCH * single.pbs_count
    assert batched.pbs_count == single.pbs_count == single.program.hidden_neurons()
    # The same calibration rows (chunks completed with real rows) and range ends: the same
    # measured ranges, so the same bit-width report.
    assert batched.report.as_dicts() == single.report.as_dicts()
    summary = batched.summary()
    assert summary["batch_size"] == BATCH and single.summary()["batch_size"] == 1
    per_call = batched.stats.statistics["size_of_inputs"]
    assert summary["input_ciphertext_bytes"] * BATCH == per_call
    assert batched.contract.batch_size == BATCH and single.contract.batch_size == 1
    assert f"{BATCH} row(s)/call" in repr(batched)


@pytest.mark.parametrize("n_rows", [1, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 1])
def test_batched_predictions_equal_one_row_calls(single, batched, data, n_rows) -> None:
    x, _ = data
    rows = x[10 : 10 + n_rows]
    q = single.quantize(rows)
    reference = single.run_integer(q, "disable")
    for model in (single, batched):
        np.testing.assert_array_equal(model.run_integer(q, "disable"), reference)
        simulated = model.run_integer(q, "simulate")
        assert simulated.shape == reference.shape
        np.testing.assert_array_equal(simulated, reference)
    np.testing.assert_array_equal(
        batched.predict(rows, fhe="simulate"), single.predict(rows, fhe="simulate")
    )


@pytest.mark.slow
def test_estimator_compiles_batched_with_the_p_error_search(clf, data, single) -> None:
    """``compile(..., batch_size=B)`` runs the default flow, its p_error search simulating the
    calibration rows in chunks of B; exact rounding keeps it comparable with one-row calls."""
    x, _ = data
    model = clf.compile(x, rounding_exact=True, batch_size=2).fhe_model_
    assert model.batch_size == 2
    assert model.stats.p_error_curve and model.stats.p_error_curve[0]["pbs"] == model.pbs_count
    expected = clf.compile(x, rounding_exact=True).fhe_model_
    assert expected.batch_size == 1
    rows = x[:5]
    np.testing.assert_array_equal(
        model.predict(rows, fhe="disable"), expected.predict(rows, fhe="disable")
    )
    # A model built without a lowered program cannot be compiled again.
    bare = type(single)(single.program, single.circuit, single.report, single.stats,
                        single.contract)  # fmt: skip
    with pytest.raises(InvalidParameterError, match="lowered program"):
        bare.with_batch_size(2)


# ----------------------------------------------------------------------------- client contract


def test_client_json_records_the_batch_size(single, batched) -> None:
    one = single.contract.to_dict()
    # One row per call: the format fheqnn wrote before batching (older versions read it).
    assert one["format"] == 2 and "batch_size" not in one
    many = batched.contract.to_dict()
    assert many["format"] == 3 and many["batch_size"] == BATCH
    assert ClientContract.from_dict(many).batch_size == BATCH
    assert ClientContract.from_dict(one).batch_size == 1


def test_client_json_records_feature_names_when_known(single) -> None:
    from dataclasses import replace

    named = replace(single.contract, feature_names=("a", "b", "c", "d"))
    d = named.to_dict()
    assert d["feature_names"] == ["a", "b", "c", "d"] and d["format"] == 2
    assert ClientContract.from_dict(d).feature_names == ("a", "b", "c", "d")
    assert "feature_names" not in single.contract.to_dict()  # unnamed: the file as before
    x = np.arange(8.0).reshape(2, 4)
    moved, reordered = named.align_columns(x, ["c", "a", "d", "b"])
    assert reordered and np.array_equal(moved, x[:, [1, 3, 0, 2]])
    assert named.align_columns(x, None) == (x, False)
    assert single.contract.align_columns(x, ["c", "a", "d", "b"]) == (x, False)
    with pytest.raises(InvalidInputError, match=r"missing \['d'\]; not in the model \['e'\]"):
        named.align_columns(x, ["a", "b", "c", "e"])
    with pytest.raises(InvalidParameterError, match="repeat"):
        replace(single.contract, feature_names=("a", "a", "c", "d"))
    with pytest.raises(InvalidParameterError, match="must be 4 strings"):
        replace(single.contract, feature_names=("a", "b"))


def test_the_client_warns_about_rows_far_outside_the_calibration_range(
    single, data, tmp_path: Path
) -> None:
    import warnings

    x, _ = data
    d = single.contract.to_dict()
    np.testing.assert_array_equal(d["feature_range"]["low"], x.min(axis=0))
    np.testing.assert_array_equal(d["feature_range"]["high"], x.max(axis=0))
    single.save(tmp_path / "model")
    client = FheModelClient(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        expected = client.quantize(x[:2])
    far = x[:2].copy()
    far[1, 2] = x[:, 2].max() + 3 * np.ptp(x[:, 2])
    with pytest.warns(InputRangeWarning, match=r"1 of 2 rows holds .* row 1, feature column 2 "
                      r"is .* the calibration rows span") as record:  # fmt: skip
        q = client.quantize(far)
    assert len(record) == 1
    # Warned, not refused: the far row is still quantized (its far value clipped), the other
    # row and the other features as before.
    assert np.array_equal(q[0], expected[0]) and np.array_equal(
        q[1, [0, 1, 3]], expected[1, [0, 1, 3]]
    )
    assert q[1, 2] >= expected[:, 2].max()
    # A client.json written before the range existed is read, and not checked.
    older = ClientContract.from_dict({k: v for k, v in d.items() if k != "feature_range"})
    assert older.feature_range is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        older.quantize(far)
    with pytest.raises(InvalidParameterError, match="low <= high"):
        ClientContract.from_dict({**d, "feature_range": {"low": [1.0] * 4, "high": [0.0] * 4}})
    with pytest.raises(InvalidParameterError, match="feature range has 1 features, the model 4"):
        ClientContract.from_dict({**d, "feature_range": {"low": [0.0], "high": [1.0]}})


def test_older_client_json_reads_as_one_row(batched) -> None:
    many = batched.contract.to_dict()
    older = {k: v for k, v in many.items() if k != "batch_size"}
    older["format"] = 2
    assert ClientContract.from_dict(older).batch_size == 1
    first = {k: v for k, v in older.items() if k != "standardization"}
    first["format"] = 1
    assert ClientContract.from_dict(first).batch_size == 1


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("batch_size"), "malformed client contract"),
        (lambda d: d.update(batch_size=0), "batch_size must be"),
        (lambda d: d.update(batch_size="3"), "batch_size must be"),
        (lambda d: d.update(format=2), "batch_size in a contract of format 2"),
        (lambda d: d.update(format=4), "format 4 is not one this version reads"),
    ],
)
def test_malformed_batch_size_in_client_json(batched, edit, match) -> None:
    d = batched.contract.to_dict()
    edit(d)
    with pytest.raises(InvalidParameterError, match=match):
        ClientContract.from_dict(d)


def test_chunks_pad_with_real_rows_and_trim_drops_them(batched, data) -> None:
    contract = batched.contract
    q = contract.quantize(data[0][:4])
    chunks = contract.chunks(q)
    assert [c.shape for c in chunks] == [(BATCH, q.shape[1])] * 2
    np.testing.assert_array_equal(chunks[1], np.stack([q[3]] * BATCH))
    assert contract.n_chunks(4) == 2 and contract.n_chunks(3) == 1 and contract.n_chunks(1) == 1
    outputs = [np.arange(BATCH * 2).reshape(BATCH, 2), np.arange(BATCH * 2).reshape(BATCH, 2)]
    assert contract.trim(outputs, 4).shape == (4, 2)


# ----------------------------------------------------------------------------- encryption


@pytest.fixture(scope="module")
def saved(tmp_path_factory, single, batched):
    root = tmp_path_factory.mktemp("batching")
    single.save(root / "one")
    batched.save(root / "many")
    return root


def test_saved_folders_record_the_batch_size(saved) -> None:
    one = json.loads((saved / "one" / "client.json").read_text())
    many = json.loads((saved / "many" / "client.json").read_text())
    assert (one["format"], one.get("batch_size")) == (2, None)
    assert (many["format"], many["batch_size"]) == (3, BATCH)
    assert json.loads((saved / "many" / "report.json").read_text())["batch_size"] == BATCH
    assert FheModelClient(saved / "one").batch_size == 1
    assert FheModelClient(saved / "many").batch_size == BATCH


@pytest.fixture(scope="module")
def many_keys(saved) -> Path:
    """Keys of the batched model (a few seconds for this tiny circuit)."""
    FheModelClient(saved / "many").keygen(saved / "keys")
    return saved / "keys"


@pytest.mark.encrypted
def test_encrypted_batched_round_trip(saved, many_keys, single, data) -> None:
    from fheqnn.runtime import encrypted_predict
    from fheqnn.runtime.artifacts import MAX_ENVELOPE_ROWS

    x, _ = data
    client = FheModelClient(saved / "many", many_keys)
    server = FheModelServer(saved / "many")
    rows = x[20:25]  # 5 rows: one full chunk of 3 and one padded chunk
    ciphertext = client.encrypt(rows)
    env = Envelope.from_bytes(ciphertext, kind="inputs")
    assert len(env.payloads) == 2 and env.meta == {"n_rows": 5}
    results = server.run(ciphertext, client.evaluation_keys())
    assert len(Envelope.from_bytes(results, kind="outputs").payloads) == 2
    expected = single.run_integer(single.quantize(rows), "disable")
    np.testing.assert_array_equal(client.decrypt_integers(results), expected)
    np.testing.assert_array_equal(client.decrypt(results), single.predict(rows))

    # A round trip of 4 rows in server calls of 2 rows: 2 ciphertexts, each padded.
    trip = encrypted_predict(client, server, x[:4], chunk=2)
    np.testing.assert_array_equal(trip.predictions, single.predict(x[:4]))

    # The size limit admits the most rows an envelope may hold, in padded chunks.
    payload = max(len(p) for p in env.payloads)
    assert server.limits["inputs"] >= math.ceil(MAX_ENVELOPE_ROWS / BATCH) * (payload + 8)

    # Results whose ciphertext count does not match their row count are refused.
    out = Envelope.from_bytes(results, kind="outputs")
    forged = Envelope("outputs", out.model_id, out.key_id, out.payloads, {"n_rows": 7})
    with pytest.raises(EnvelopeError, match="2 ciphertexts for 7 rows, expected 3"):
        client.decrypt_integers(forged.to_bytes())


@pytest.mark.encrypted
def test_batched_model_over_http(saved, many_keys, single, data) -> None:
    """The service runs one circuit call per ciphertext; its client sends ceil(k / B) of them."""
    from fheqnn.serving.app import create_app
    from fheqnn.serving.client import HttpClient
    from fheqnn.serving.config import ServeConfig
    from fheqnn.serving.runner import BackgroundServer

    x, _ = data
    client = FheModelClient(saved / "many", many_keys)
    config = ServeConfig((saved / "many",), max_request_mb=64)
    with BackgroundServer(create_app(config)) as running, HttpClient(running.url) as http:
        (summary,) = http.models()
        assert summary["batch_size"] == BATCH
        for rows in (x[:1], x[:4]):
            np.testing.assert_array_equal(http.predict(client, rows), single.predict(rows))


def test_single_row_models_keep_their_envelope_limits(saved) -> None:
    """One row per call: the limits are those of the format before batching."""
    from fheqnn.runtime.artifacts import MAX_ENVELOPE_ROWS, envelope_limits, open_model_folder

    folder = open_model_folder(saved / "one")
    per_row = folder.read_json("report.json")["input_ciphertext_bytes"]
    limits = envelope_limits(folder)
    assert limits["inputs"] == MAX_ENVELOPE_ROWS * (4 * per_row + 4096) + (1 << 16)


def test_report_without_batch_size_means_one_row(saved, tmp_path: Path) -> None:
    """A report.json written before batching (no batch_size) gives one row per payload."""
    from fheqnn.runtime.artifacts import envelope_limits, open_model_folder, write_model_folder

    source = open_model_folder(saved / "one")
    files = {name: source.read_bytes(name) for name in source.manifest["files"]}
    report = json.loads(files["report.json"])
    del report["batch_size"]
    files["report.json"] = json.dumps(report).encode()
    extra = {k: source.manifest[k] for k in ("n_features", "n_outputs")}
    write_model_folder(tmp_path / "old", files, extra)
    assert envelope_limits(open_model_folder(tmp_path / "old")) == envelope_limits(source)


def test_predict_server_sends_whole_circuit_calls_per_request(capsys) -> None:
    """``predict --server``: by default each request fills whole circuit calls (at least 8
    rows); an explicit count that pads calls is kept and the padding is pointed out."""
    from fheqnn.cli.common import CliError
    from fheqnn.cli.server import request_rows

    assert [request_rows(b, None) for b in (1, 3, 8, 32)] == [8, 9, 8, 32]
    assert request_rows(32, 64) == 64 and "pads" not in capsys.readouterr().out
    assert request_rows(32, 8) == 8
    assert "pads every request to 32 rows" in capsys.readouterr().out
    with pytest.raises(CliError, match="--batch-rows must be >= 1"):
        request_rows(4, 0)
