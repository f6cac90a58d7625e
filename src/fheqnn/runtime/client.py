"""The client side: keys, quantize + encrypt, decrypt + dequantize + post-process.

The client holds the secret key; it sends only serialized evaluation keys and ciphertexts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..concrete_seam import fhe as _fhe
from ..concrete_seam import load_client_specs
from ..contract import ClientContract, softmax
from ..errors import InvalidParameterError
from .artifacts import (
    CLIENT_FILE,
    CLIENT_FILES,
    CLIENT_SPECS_FILE,
    ArtifactError,
    ModelFolder,
    check_destination,
    key_id_of,
    open_model_folder,
    sha256_bytes,
    write_folder_atomically,
)
from .envelope import Envelope

logger = logging.getLogger(__name__)

SECRET_KEYS_FILE = "secret.keys"
EVALUATION_KEYS_FILE = "evaluation.keys"
KEY_INFO_FILE = "key.json"


@dataclass(frozen=True)
class KeyInfo:
    """What a key folder holds.

    Attributes:
        key_id: identity of the key (hash of the evaluation keys).
        model_id: the compiled model the keys belong to.
        keygen_seconds: time key generation took (s).
        evaluation_keys_bytes: size of the serialized evaluation keys (bytes).
        folder: where they are.
    """

    key_id: str
    model_id: str
    keygen_seconds: float
    evaluation_keys_bytes: int
    folder: Path


def _load_key_info(key_dir: Path) -> dict[str, Any]:
    info_path = key_dir / KEY_INFO_FILE
    if not key_dir.is_dir():
        raise ArtifactError(f"key folder {str(key_dir)!r} does not exist")
    if not info_path.is_file():
        raise ArtifactError(f"{key_dir}: {KEY_INFO_FILE} is missing: not a key folder")
    try:
        return json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{info_path} is not valid JSON: {exc}") from exc


class FheModelClient:
    """Client of a compiled model folder.

    Args:
        model_folder: the compiled model (only its client part is read and verified).
        key_dir: a key folder made by :meth:`keygen` for this model, to load now.
    """

    def __init__(self, model_folder: str | Path, key_dir: str | Path | None = None) -> None:
        self.folder: ModelFolder = open_model_folder(model_folder, need=CLIENT_FILES)
        try:
            self.part: ClientContract = ClientContract.from_dict(self.folder.read_json(CLIENT_FILE))
        except InvalidParameterError as exc:
            raise ArtifactError(f"{self.folder.path / CLIENT_FILE}: {exc}") from exc
        self._specs = load_client_specs(self.folder.file(CLIENT_SPECS_FILE).read_bytes())
        self._client = _fhe().Client(self._specs)
        self.key_info: KeyInfo | None = None
        self._evaluation_keys: bytes | None = None
        if key_dir is not None:
            self.load_keys(key_dir)

    @property
    def model_id(self) -> str:
        """The compiled model's identity."""
        return self.folder.model_id

    # ------------------------------------------------------------------ keys
    def keygen(
        self, key_dir: str | Path, *, overwrite: bool = False, seed: int | None = None
    ) -> KeyInfo:
        """Generate keys into a new folder: secret key (owner-only) and evaluation keys.

        An existing non-empty folder is refused unless ``overwrite``; the folder appears
        complete or not at all.

        Returns:
            The key information (id, time, evaluation key size).
        """
        key_dir = Path(key_dir)
        check_destination(key_dir, overwrite=overwrite, what="key folder")
        fhe = _fhe()
        client = fhe.Client(self._specs)
        start = time.perf_counter()
        client.keys.generate(force=True, secret_seed=seed, encryption_seed=seed)
        seconds = time.perf_counter() - start
        secret = client.keys.serialize()
        evaluation = client.evaluation_keys.serialize()
        key_id = key_id_of(evaluation)
        evaluation_blob = Envelope(
            "evaluation_keys", self.model_id, key_id, (evaluation,)
        ).to_bytes()
        info = {
            "key_id": key_id,
            "model_id": self.model_id,
            "sha256": {
                SECRET_KEYS_FILE: sha256_bytes(secret),
                EVALUATION_KEYS_FILE: sha256_bytes(evaluation_blob),
            },
            "keygen_seconds": seconds,
            "evaluation_keys_bytes": len(evaluation_blob),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

        def write(folder: Path) -> None:
            secret_path = folder / SECRET_KEYS_FILE
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secret)
            (folder / EVALUATION_KEYS_FILE).write_bytes(evaluation_blob)
            (folder / KEY_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))

        write_folder_atomically(key_dir, write, overwrite=overwrite, mode=0o700)
        self._client = client
        self._evaluation_keys = evaluation_blob
        self.key_info = KeyInfo(key_id, self.model_id, seconds, len(evaluation_blob), key_dir)
        logger.info(
            "generated keys %s in %.1f s (%d evaluation key bytes)",
            key_id,
            seconds,
            len(evaluation_blob),
        )
        return self.key_info

    def load_keys(self, key_dir: str | Path) -> KeyInfo:
        """Load a key folder; it must belong to this compiled model."""
        key_dir = Path(key_dir)
        info = _load_key_info(key_dir)
        if info.get("model_id") != self.model_id:
            raise ArtifactError(
                f"keys in {key_dir} belong to compiled model {info.get('model_id')}, not to "
                f"{self.folder.path} ({self.model_id}): generate keys for this model"
            )
        secret_path = key_dir / SECRET_KEYS_FILE
        if not secret_path.is_file():
            raise ArtifactError(f"{key_dir}: {SECRET_KEYS_FILE} is missing")
        secret = secret_path.read_bytes()
        checksums = info.get("sha256")
        if not isinstance(checksums, dict) or not isinstance(info.get("key_id"), str):
            raise ArtifactError(f"{key_dir / KEY_INFO_FILE} is malformed")
        if sha256_bytes(secret) != checksums.get(SECRET_KEYS_FILE):
            raise ArtifactError(
                f"{secret_path} does not match the checksum in {KEY_INFO_FILE} "
                "(truncated or corrupt)"
            )
        fhe = _fhe()
        try:
            keys = fhe.Keys.deserialize(secret)
        except Exception as exc:
            raise ArtifactError(
                f"{secret_path} cannot be read (truncated or corrupt): {exc}"
            ) from exc
        client = fhe.Client(self._specs)
        client.keys = keys
        self._client = client
        self._evaluation_keys = None
        self.key_info = KeyInfo(
            info["key_id"],
            self.model_id,
            float(info.get("keygen_seconds", 0.0)),
            int(info.get("evaluation_keys_bytes", 0)),
            key_dir,
        )
        return self.key_info

    def _require_keys(self) -> KeyInfo:
        if self.key_info is None:
            raise ArtifactError("no keys loaded: call keygen(folder) or load_keys(folder) first")
        return self.key_info

    def evaluation_keys(self) -> bytes:
        """The serialized evaluation keys to send to the server (never the secret key)."""
        info = self._require_keys()
        if self._evaluation_keys is None:
            path = info.folder / EVALUATION_KEYS_FILE
            if not path.is_file():
                raise ArtifactError(f"{info.folder}: {EVALUATION_KEYS_FILE} is missing")
            blob = path.read_bytes()
            env = Envelope.from_bytes(
                blob,
                kind="evaluation_keys",
                model_id=self.model_id,
                key_id=info.key_id,
                what=str(path),
            )
            if len(env.payloads) != 1 or key_id_of(env.payloads[0]) != info.key_id:
                raise ArtifactError(f"{path} does not hold the keys of key {info.key_id} (corrupt)")
            self._evaluation_keys = blob
        return self._evaluation_keys

    # ------------------------------------------------------------------ data
    def quantize(self, x: Any) -> np.ndarray:
        """Validate, standardize and quantize float rows (int64, (n_rows, n_features))."""
        return self.part.quantize(x)

    def encrypt(self, x: Any) -> bytes:
        """Quantize, encrypt and serialize a batch of float rows."""
        info = self._require_keys()
        q = self.quantize(x)
        payloads = tuple(self._client.encrypt(row[None, :]).serialize() for row in q)
        return Envelope(
            "inputs", self.model_id, info.key_id, payloads, {"n_rows": len(q)}
        ).to_bytes()

    def decrypt_integers(self, results: bytes) -> np.ndarray:
        """Deserialize and decrypt results: output accumulators, int64 (n_rows, n_outputs)."""
        info = self._require_keys()
        env = Envelope.from_bytes(
            results, kind="outputs", model_id=self.model_id, key_id=info.key_id, what="results"
        )
        fhe = _fhe()
        rows = [
            np.asarray(self._client.decrypt(fhe.Value.deserialize(p))).reshape(1, -1)
            for p in env.payloads
        ]
        # The circuit returns the output accumulators shifted to be non-negative.
        return self.part.unshift(np.concatenate(rows))

    def decrypt_raw(self, results: bytes) -> np.ndarray:
        """Decrypted and dequantized float outputs (n_rows, n_outputs)."""
        return self.part.dequantize(self.decrypt_integers(results))

    def decrypt(self, results: bytes) -> np.ndarray:
        """Decrypted predictions after post-processing (labels, values or raw outputs)."""
        return self.part.postprocess(self.decrypt_raw(results))

    def decrypt_proba(self, results: bytes) -> np.ndarray:
        """Softmax of the decrypted outputs (classifiers)."""
        return softmax(self.decrypt_raw(results))
