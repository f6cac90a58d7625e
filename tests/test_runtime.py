"""Client / server runtime: artifacts, keys, ciphertexts, and every bad input of the spec."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fheqnn import (
    ArtifactError,
    EnvelopeError,
    FheModelClient,
    FheModelServer,
    InvalidInputError,
)
from fheqnn.runtime.envelope import Envelope


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tiny_models) -> tuple[np.ndarray, np.ndarray]:
    return tiny_models.x, tiny_models.y


@pytest.fixture(scope="module")
def workspace(tiny_models):
    """Two compiled models of one tiny network and a key folder for each (conftest.py: ``a``
    bit-exact, so encrypted results are compared with simulated ones; ``b`` coarser)."""
    return {
        "clf": tiny_models.clf,
        "a": tiny_models.a,
        "b": tiny_models.b,
        "keys_a": tiny_models.keys_a,
        "keys_b": tiny_models.keys_b,
        "root": tiny_models.root,
    }


def test_folder_contents_and_manifest(workspace) -> None:
    folder = workspace["a"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "client.json",
        "client.specs",
        "manifest.json",
        "program.json",
        "report.json",
        "server.zip",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["versions"]["concrete-python"] == "2.11.0"
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    # The client part holds no weights.
    assert "weight" not in (folder / "client.json").read_text()


def test_key_folder_permissions_and_contents(workspace) -> None:
    keys = workspace["keys_a"]
    assert sorted(p.name for p in keys.iterdir()) == ["evaluation.keys", "key.json", "secret.keys"]
    assert (keys / "secret.keys").stat().st_mode & 0o777 == 0o600
    assert keys.stat().st_mode & 0o777 == 0o700
    info = json.loads((keys / "key.json").read_text())
    assert info["model_id"] == FheModelClient(workspace["a"]).model_id


def test_encrypted_round_trip_equals_simulation(workspace, data) -> None:
    x, _ = data
    client = FheModelClient(workspace["a"], workspace["keys_a"])
    server = FheModelServer(workspace["a"])
    ciphertext = client.encrypt(x[:3])
    results = server.run(ciphertext, client.evaluation_keys())
    model = workspace["clf"]
    # The model object compiled last is "b"; compare with a's saved program through the client.
    decrypted = client.decrypt_integers(results)
    from fheqnn.compiler.serialize import program_from_dict
    from fheqnn.runtime.artifacts import open_model_folder

    program = program_from_dict(open_model_folder(workspace["a"]).read_json("program.json"))
    # The client contract standardizes (as the estimator learned in fit), then quantizes.
    np.testing.assert_array_equal(decrypted, program.run_integer(client.part.quantize(x[:3])))
    labels = client.decrypt(results)
    assert set(labels) <= {"a", "b", "c"}
    assert model.classes_.tolist() == ["a", "b", "c"]
    proba = client.decrypt_proba(results)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def _round_trip(folder: Path, keys: Path, x: np.ndarray) -> None:
    """Encrypt with the key folder, run on the server, decrypt: the interpreter's integers."""
    from fheqnn.compiler.serialize import program_from_dict
    from fheqnn.runtime.artifacts import open_model_folder

    client = FheModelClient(folder, keys)
    results = FheModelServer(folder).run(client.encrypt(x), client.evaluation_keys())
    program = program_from_dict(open_model_folder(folder).read_json("program.json"))
    expected = program.run_integer(client.part.quantize(x))
    np.testing.assert_array_equal(client.decrypt_integers(results), expected)


def test_the_secret_key_file_holds_the_secret_keys_alone(workspace, data) -> None:
    """secret.keys holds what encryption and decryption need, not Concrete's whole key set
    (whose evaluation keys are evaluation.keys): the client loads tens of KB, not tens of MB."""
    from fheqnn.runtime.client import CLIENT_KEYSET_OVERHEAD, KEY_FORMAT_VERSION

    keys = workspace["keys_a"]
    sizes = FheModelClient(workspace["a"]).key_sizes()
    secret = (keys / "secret.keys").stat().st_size
    assert sizes.secret <= secret <= sizes.secret + CLIENT_KEYSET_OVERHEAD
    assert 100 * secret < (keys / "evaluation.keys").stat().st_size
    info = json.loads((keys / "key.json").read_text())
    assert info["format_version"] == KEY_FORMAT_VERSION == 3
    assert info["bytes"]["secret.keys"] == secret
    _round_trip(workspace["a"], keys, data[0][:3])


def test_the_secret_key_file_does_not_fix_the_encryption_randomness(workspace, data) -> None:
    """secret.keys is a key set built with fixed seeds around the secret keys: the randomness of
    encryption must still be fresh. Two clients that load the same file encrypt the same row
    into different ciphertexts (a seeded stream would repeat the first one, noise included)."""
    row = data[0][:1]
    first = FheModelClient(workspace["a"], workspace["keys_a"]).encrypt(row)
    second = FheModelClient(workspace["a"], workspace["keys_a"]).encrypt(row)
    assert first != second


@pytest.mark.slow
@pytest.mark.encrypted
def test_a_key_folder_of_version_2_is_still_read(workspace, data, tmp_path) -> None:
    """Key folders written before version 3 hold Concrete's whole key set in secret.keys."""
    from fheqnn.concrete_seam import fhe, load_client_specs
    from fheqnn.runtime.artifacts import key_id_of, sha256_bytes

    folder = workspace["a"]
    concrete_client = fhe().Client(load_client_specs((folder / "client.specs").read_bytes()))
    concrete_client.keys.generate(force=True)
    whole = bytes(concrete_client.keys.serialize())
    evaluation = bytes(concrete_client.evaluation_keys.serialize())
    model_id, key_id = FheModelClient(folder).model_id, key_id_of(evaluation)
    blob = Envelope("evaluation_keys", model_id, key_id, (evaluation,)).to_bytes()
    keys = tmp_path / "old"
    keys.mkdir(mode=0o700)
    (keys / "secret.keys").write_bytes(whole)
    os.chmod(keys / "secret.keys", 0o600)
    (keys / "evaluation.keys").write_bytes(blob)
    files = {"secret.keys": whole, "evaluation.keys": blob}
    (keys / "key.json").write_text(json.dumps({
        "format": "fheqnn-keys", "format_version": 2, "key_id": key_id, "model_id": model_id,
        "sha256": {name: sha256_bytes(b) for name, b in files.items()},
        "bytes": {name: len(b) for name, b in files.items()},
        "keygen_seconds": 0.0, "evaluation_keys_bytes": len(blob),
    }))  # fmt: skip
    assert len(whole) > len(evaluation)  # the whole key set, evaluation keys included
    _round_trip(folder, keys, data[0][:3])
    # A version 2 folder whose secret.keys holds only the secret keys is refused by its size.
    secret = (workspace["keys_a"] / "secret.keys").read_bytes()
    info = json.loads((keys / "key.json").read_text())
    info["sha256"]["secret.keys"], info["bytes"]["secret.keys"] = sha256_bytes(secret), len(secret)
    (keys / "key.json").write_text(json.dumps(info))
    (keys / "secret.keys").write_bytes(secret)
    with pytest.raises(ArtifactError, match="truncated, or keys of another model"):
        FheModelClient(folder, keys)


def test_server_caches_evaluation_keys(workspace, data) -> None:
    x, _ = data
    client = FheModelClient(workspace["a"], workspace["keys_a"])
    server = FheModelServer(workspace["a"])
    ciphertext = client.encrypt(x[:1])
    with pytest.raises(EnvelopeError, match="no evaluation keys"):
        server.run(ciphertext)
    key_id = server.register_evaluation_keys(client.evaluation_keys())
    assert key_id == client.key_info.key_id and server.has_keys(key_id)
    # Second request without keys: served from the cache.
    client.decrypt(server.run(ciphertext))


def test_existing_keys_are_never_overwritten(workspace) -> None:
    keys = workspace["keys_a"]
    before = snapshot(keys)
    with pytest.raises(ArtifactError, match="overwritten silently"):
        FheModelClient(workspace["a"]).keygen(keys)
    assert snapshot(keys) == before


def test_keys_of_another_model_are_rejected(workspace) -> None:
    before = snapshot(workspace["root"])
    with pytest.raises(ArtifactError, match="belong to compiled model"):
        FheModelClient(workspace["a"], workspace["keys_b"])
    server = FheModelServer(workspace["a"])
    other = FheModelClient(workspace["b"], workspace["keys_b"])
    with pytest.raises(EnvelopeError, match="made for compiled model"):
        server.register_evaluation_keys(other.evaluation_keys())
    assert snapshot(workspace["root"]) == before


def test_ciphertext_of_another_model_or_key_is_rejected(workspace, data) -> None:
    x, _ = data
    client_a = FheModelClient(workspace["a"], workspace["keys_a"])
    client_b = FheModelClient(workspace["b"], workspace["keys_b"])
    server_a = FheModelServer(workspace["a"])
    server_a.register_evaluation_keys(client_a.evaluation_keys())
    with pytest.raises(EnvelopeError, match="made for compiled model"):
        server_a.run(client_b.encrypt(x[:1]))
    # Same model, another key: a ciphertext relabelled for key a is caught at decryption time
    # by the key id, and results of another key are refused by the client.
    results = server_a.run(client_a.encrypt(x[:1]))
    env = Envelope.from_bytes(results, kind="outputs")
    forged = Envelope("outputs", env.model_id, "0" * 32, env.payloads).to_bytes()
    with pytest.raises(EnvelopeError, match="made with key"):
        client_a.decrypt(forged)
    expected = r"holds encrypted results \(written by .run.\), expected encrypted rows"
    with pytest.raises(EnvelopeError, match=expected):
        server_a.run(results)


def test_truncated_or_foreign_ciphertext(workspace, data) -> None:
    x, _ = data
    client = FheModelClient(workspace["a"], workspace["keys_a"])
    server = FheModelServer(workspace["a"])
    blob = client.encrypt(x[:2])
    with pytest.raises(EnvelopeError, match="truncated"):
        server.run(blob[:-10], client.evaluation_keys())
    with pytest.raises(EnvelopeError, match="not an fheqnn envelope"):
        server.run(b"hello" + blob, client.evaluation_keys())


def test_bad_rows_are_rejected_before_encryption(workspace, data) -> None:
    x, _ = data
    client = FheModelClient(workspace["a"], workspace["keys_a"])
    with pytest.raises(InvalidInputError, match="3 features per row, expected 4"):
        client.encrypt(x[:2, :3])
    bad = x[:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        client.encrypt(bad)
    with pytest.raises(InvalidInputError, match="infinity"):
        client.encrypt(np.full((1, 4), np.inf))


def _copy(workspace, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(workspace[name], target)
    return target


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            lambda f: (f / "server.zip").write_bytes((f / "server.zip").read_bytes()[:-100]),
            "server.zip.*truncated",
        ),
        (lambda f: (f / "server.zip").unlink(), "server.zip is missing"),
        (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda f: (f / "manifest.json").write_text("{"), "not valid JSON"),
    ],
)
def test_damaged_model_folder_for_the_server(workspace, tmp_path, damage, match) -> None:
    folder = _copy(workspace, "a", tmp_path)
    damage(folder)
    before = snapshot(folder)
    with pytest.raises(ArtifactError, match=match):
        FheModelServer(folder)
    assert snapshot(folder) == before


def test_tampered_client_part_is_detected(workspace, tmp_path) -> None:
    folder = _copy(workspace, "a", tmp_path)
    raw = bytearray((folder / "client.json").read_bytes())
    raw[10] = ord("X") if raw[10] != ord("X") else ord("Y")
    (folder / "client.json").write_bytes(bytes(raw))
    before = snapshot(folder)
    with pytest.raises(ArtifactError, match=r"client\.json: checksum mismatch"):
        FheModelClient(folder)
    assert snapshot(folder) == before


def test_version_mismatch_is_rejected(workspace, tmp_path) -> None:
    folder = _copy(workspace, "a", tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["versions"]["concrete-python"] = "2.0.0"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"compiled with concrete-python 2\.0\.0"):
        FheModelServer(folder)


def test_missing_or_truncated_keys(workspace, tmp_path) -> None:
    keys = _copy(workspace, "keys_a", tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        FheModelClient(workspace["a"], tmp_path / "nowhere")
    secret = keys / "secret.keys"
    os.chmod(secret, 0o600)
    secret.write_bytes(secret.read_bytes()[:1000])
    before = snapshot(keys)
    with pytest.raises(ArtifactError, match="truncated"):
        FheModelClient(workspace["a"], keys)
    assert snapshot(keys) == before


def test_failed_save_leaves_nothing_behind(workspace, tmp_path) -> None:
    model = workspace["clf"].fhe_model_
    target = tmp_path / "circuits" / "x"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("user data")
    with pytest.raises(ArtifactError, match="not empty"):
        model.save(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x"]
    assert snapshot(target) == {"keep.txt": b"user data"}


def test_evaluation_keys_under_a_stolen_key_id_are_refused(workspace) -> None:
    """Key ids are hashes of the keys: another client's keys cannot take a victim's id."""
    victim = FheModelClient(workspace["a"], workspace["keys_a"])
    env = Envelope.from_bytes(victim.evaluation_keys(), kind="evaluation_keys")
    keys = env.payloads[0]
    # Flip the last byte (setting it to zero changed nothing when it was already zero: 1 run
    # in 256 passed the forged keys as the victim's own and failed this test).
    forged = Envelope(
        "evaluation_keys", env.model_id, env.key_id, (keys[:-1] + bytes([keys[-1] ^ 0xFF]),)
    ).to_bytes()
    server = FheModelServer(workspace["a"])
    with pytest.raises(EnvelopeError, match="do not hash to that id"):
        server.register_evaluation_keys(forged)
    assert not server.has_keys(env.key_id)


def test_malformed_envelope_headers(workspace) -> None:
    import hashlib
    import struct

    from fheqnn.runtime.envelope import MAGIC

    server = FheModelServer(workspace["a"])
    for header in (
        b"[]",
        b'{"kind": "inputs"}',
        b'{"kind": "inputs", "model_id": "m", "key_id": "k", "count": "2"}',
    ):
        body = struct.pack(">I", len(header)) + header
        blob = MAGIC + hashlib.sha256(body).digest() + body
        with pytest.raises(EnvelopeError, match="malformed header"):
            server.run(blob)


def test_corrupt_key_files_are_detected(workspace, tmp_path) -> None:
    keys = _copy(workspace, "keys_a", tmp_path)
    ev = keys / "evaluation.keys"
    data = bytearray(ev.read_bytes())
    data[-5] ^= 0xFF
    ev.write_bytes(bytes(data))
    client = FheModelClient(workspace["a"], keys)
    with pytest.raises(ArtifactError, match="corrupt"):
        client.evaluation_keys()


def test_a_folder_appearing_during_a_write_is_not_replaced(tmp_path) -> None:
    from fheqnn.runtime.artifacts import write_folder_atomically

    target = tmp_path / "keys" / "k"

    def write(folder: Path) -> None:
        (folder / "new.bin").write_bytes(b"new")
        target.mkdir(parents=True)  # another process got there first
        (target / "secret.keys").write_bytes(b"theirs")

    with pytest.raises(ArtifactError, match="nothing was replaced"):
        write_folder_atomically(target, write)
    assert snapshot(target) == {"secret.keys": b"theirs"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["k"]
