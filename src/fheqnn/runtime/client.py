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

from ..concrete_seam import (
    KeySizes,
    client_keyset_bytes,
    deserialize_keys,
    key_sizes,
    load_client_specs,
)
from ..concrete_seam import fhe as _fhe
from ..contract import ClientContract, softmax
from ..errors import InvalidParameterError
from ..interrupts import call_interruptibly
from .artifacts import (
    CLIENT_FILE,
    CLIENT_FILES,
    CLIENT_SPECS_FILE,
    KEY_FOLDER,
    KEY_INFO_FILE,
    ArtifactError,
    ModelFolder,
    check_destination,
    key_id_of,
    open_model_folder,
    read_versioned_json,
    sha256_bytes,
    write_folder_atomically,
)
from .envelope import Envelope, EnvelopeError, read_envelope_file

logger = logging.getLogger(__name__)

SECRET_KEYS_FILE = "secret.keys"
EVALUATION_KEYS_FILE = "evaluation.keys"


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


#: ``key.json``'s format. Version 3: ``secret.keys`` holds the secret keys alone (tens of KB,
#: :func:`~fheqnn.concrete_seam.client_keyset_bytes`); version 2 folders, whose ``secret.keys``
#: holds Concrete's whole key set (evaluation keys included, 50-700 MB), are still read. Older
#: ones lack the sizes and are refused.
KEY_FORMAT, KEY_FORMAT_VERSION = "fheqnn-keys", 3
KEY_FORMAT_VERSIONS = (2, KEY_FORMAT_VERSION)

#: What the secret key file of a version 3 folder may hold beyond the secret keys' coefficients
#: (Concrete's framing and the keys' parameters: 240 bytes measured).
CLIENT_KEYSET_OVERHEAD = 64 << 10


def _load_key_info(key_dir: Path) -> dict[str, Any]:
    """Read and check the shape of a key folder's ``key.json`` (every field used later)."""
    info_path = key_dir / KEY_INFO_FILE
    info = read_versioned_json(
        key_dir,
        KEY_INFO_FILE,
        folder_what="key folder",
        what="key information",
        not_ours="not a key.json written by 'fheqnn keygen'",
        fmt=KEY_FORMAT,
        version=KEY_FORMAT_VERSIONS,
        hint=" (keys made by an older fheqnn?): generate the keys again with 'fheqnn keygen'",
    )
    files = (SECRET_KEYS_FILE, EVALUATION_KEYS_FILE)
    sums, sizes = info.get("sha256"), info.get("bytes")
    well_formed = (
        isinstance(info.get("key_id"), str)
        and isinstance(info.get("model_id"), str)
        and isinstance(sums, dict)
        and isinstance(sizes, dict)
        and all(isinstance(sums.get(f), str) for f in files)
        and all(isinstance(sizes.get(f), int) and not isinstance(sizes.get(f), bool) for f in files)
        and isinstance(info.get("keygen_seconds", 0.0), int | float)
    )
    if not well_formed:
        raise ArtifactError(
            f"{info_path} is malformed (expected key_id, model_id, and the sha256 and bytes "
            f"of {files}): generate the keys again"
        )
    return info


def _warn_if_exposed(key_dir: Path, secret_path: Path) -> None:
    """Log a warning when the secret key is open to other users (group or others bits)."""
    try:
        file_mode = secret_path.stat().st_mode & 0o777
    except OSError:
        return
    if file_mode & 0o077:
        logger.warning(
            "%s is readable by other users (mode %o): it decrypts everything encrypted with "
            "it; restrict it with 'chmod 600 %s'",
            secret_path,
            file_mode,
            secret_path,
        )


def _checked_size(path: Path, expected: int, what: str) -> int:
    """The size of ``path``, which must be ``expected`` (from ``key.json``)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if size != expected:
        raise ArtifactError(
            f"{path} has {size} bytes, {KEY_INFO_FILE} says {expected} ({what} truncated or "
            "replaced): generate the keys again"
        )
    return size


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
        try:
            self._specs = load_client_specs(self.folder.read_bytes(CLIENT_SPECS_FILE))
        except RuntimeError as exc:
            raise ArtifactError(
                f"{self.folder.file(CLIENT_SPECS_FILE)} cannot be read: {exc}"
            ) from exc
        self._client = _fhe().Client(self._specs)
        self.key_info: KeyInfo | None = None
        self._key_info_raw: dict[str, Any] = {}
        self._evaluation_keys: bytes | None = None
        if key_dir is not None:
            self.load_keys(key_dir)

    @property
    def model_id(self) -> str:
        """The compiled model's identity."""
        return self.folder.model_id

    def key_sizes(self) -> KeySizes:
        """Sizes of this model's keys (bytes), from its client specifications."""
        return key_sizes(self._specs)

    # ------------------------------------------------------------------ keys
    def keygen(
        self, key_dir: str | Path, *, overwrite: bool = False, seed: int | None = None
    ) -> KeyInfo:
        """Generate keys into a new folder: secret key (owner-only) and evaluation keys.

        ``secret.keys`` holds the secret keys alone, what encryption and decryption need (tens
        of KB; not Concrete's whole key set, whose evaluation keys are ``evaluation.keys``),
        so a client loads only them. An existing non-empty folder is refused unless
        ``overwrite`` and it is a key folder; the model folder itself is never replaced. The
        folder appears complete or not at all, Ctrl-C included; ``secret.keys`` is created
        ``0600`` in a ``0700`` folder whatever the umask.

        Returns:
            The key information (id, time, evaluation key size).
        """
        key_dir = Path(key_dir)
        inputs = (self.folder.path,)
        check_destination(
            key_dir, overwrite=overwrite, what="key folder", kind=KEY_FOLDER, inputs=inputs
        )
        fhe = _fhe()
        client = fhe.Client(self._specs)

        def generate() -> tuple[bytes, bytes]:
            client.keys.generate(force=True, secret_seed=seed, encryption_seed=seed)
            whole = bytes(client.keys.serialize())
            return client_keyset_bytes(whole, self._specs), bytes(
                client.evaluation_keys.serialize()
            )

        # Concrete's key generation holds the GIL and, while it runs, a native SIGINT handler
        # that kills the process: the command-line tool runs the whole command in a child
        # process for that reason (see fheqnn.interrupts.run_in_child).
        start = time.perf_counter()
        secret, evaluation = call_interruptibly(generate)
        seconds = time.perf_counter() - start
        key_id = key_id_of(evaluation)
        evaluation_blob = Envelope(
            "evaluation_keys", self.model_id, key_id, (evaluation,)
        ).to_bytes()
        info = {
            "format": KEY_FORMAT,
            "format_version": KEY_FORMAT_VERSION,
            "key_id": key_id,
            "model_id": self.model_id,
            "sha256": {
                SECRET_KEYS_FILE: sha256_bytes(secret),
                EVALUATION_KEYS_FILE: sha256_bytes(evaluation_blob),
            },
            "bytes": {SECRET_KEYS_FILE: len(secret), EVALUATION_KEYS_FILE: len(evaluation_blob)},
            "keygen_seconds": seconds,
            "evaluation_keys_bytes": len(evaluation_blob),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

        def write(folder: Path) -> None:
            secret_path = folder / SECRET_KEYS_FILE
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)  # a umask can only remove bits; never add any
                handle.write(secret)
            (folder / EVALUATION_KEYS_FILE).write_bytes(evaluation_blob)
            (folder / KEY_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))

        write_folder_atomically(
            key_dir, write, overwrite=overwrite, mode=0o700, kind=KEY_FOLDER, inputs=inputs
        )
        self._client = client
        self._key_info_raw = info
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
        """Load a key folder; it must belong to this compiled model.

        The secret key's size is checked against ``key.json`` and against what this model's
        key parameters imply, and its checksum against ``key.json``, before Concrete reads it.

        Raises:
            ArtifactError: missing, malformed, truncated or tampered files, keys of another
                model.
        """
        key_dir = Path(key_dir)
        info = _load_key_info(key_dir)
        if info["model_id"] != self.model_id:
            raise ArtifactError(
                f"keys in {key_dir} belong to compiled model {info['model_id']}, not to "
                f"{self.folder.path} ({self.model_id}): generate keys for this model"
            )
        secret_path = key_dir / SECRET_KEYS_FILE
        if not secret_path.is_file():
            raise ArtifactError(f"{key_dir}: {SECRET_KEYS_FILE} is missing")
        _warn_if_exposed(key_dir, secret_path)
        size = _checked_size(secret_path, info["bytes"][SECRET_KEYS_FILE], "secret key")
        sizes = self.key_sizes()
        if info["format_version"] >= 3:  # the secret keys alone
            low, high = sizes.secret, sizes.secret + CLIENT_KEYSET_OVERHEAD
        else:  # Concrete's whole key set, evaluation keys included
            low = sizes.secret + key_sizes(self._specs, compressed=True).evaluation
            high = sizes.secret + sizes.evaluation_full + (1 << 20)
        if not low <= size <= high:
            raise ArtifactError(
                f"{secret_path} has {size} bytes, but this model's keys take {low} to {high} "
                "bytes (truncated, or keys of another model): generate the keys again"
            )
        try:
            secret = secret_path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{secret_path} cannot be read: {exc.strerror or exc}") from exc
        if sha256_bytes(secret) != info["sha256"][SECRET_KEYS_FILE]:
            raise ArtifactError(
                f"{secret_path} does not match the checksum in {KEY_INFO_FILE} "
                "(truncated or corrupt)"
            )
        try:
            keys = deserialize_keys(secret)
        except RuntimeError as exc:
            raise ArtifactError(
                f"{secret_path} cannot be read (truncated or corrupt): {exc}"
            ) from exc
        client = _fhe().Client(self._specs)
        client.keys = keys
        self._client = client
        self._evaluation_keys = None
        self._key_info_raw = info
        self.key_info = KeyInfo(
            info["key_id"],
            self.model_id,
            float(info.get("keygen_seconds", 0.0)),
            int(info["bytes"][EVALUATION_KEYS_FILE]),
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
            expected = self._key_info_raw["bytes"][EVALUATION_KEYS_FILE]
            _checked_size(path, expected, "evaluation keys")
            try:
                blob = read_envelope_file(path, max_bytes=expected, what=str(path))
                env = Envelope.from_bytes(
                    blob,
                    kind="evaluation_keys",
                    model_id=self.model_id,
                    key_id=info.key_id,
                    what=str(path),
                )
            except EnvelopeError as exc:
                raise ArtifactError(str(exc)) from exc
            if len(env.payloads) != 1 or key_id_of(env.payloads[0]) != info.key_id:
                raise ArtifactError(f"{path} does not hold the keys of key {info.key_id} (corrupt)")
            self._evaluation_keys = blob
        return self._evaluation_keys

    # ------------------------------------------------------------------ data
    def quantize(self, x: Any, *, check_range: bool = True) -> np.ndarray:
        """Validate, standardize and quantize float rows (int64, (n_rows, n_features)).

        ``check_range``: warn about rows outside the calibration range
        (:meth:`~fheqnn.contract.ClientContract.check_and_warn`); ``False`` for the parts of
        rows already checked as a whole.
        """
        return self.part.quantize(x, check_range=check_range)

    @property
    def batch_size(self) -> int:
        """Rows per circuit call: :meth:`encrypt` makes one ciphertext per chunk of this many."""
        return self.part.batch_size

    def encrypt(self, x: Any, *, check_range: bool = True) -> bytes:
        """Quantize, encrypt and serialize float rows.

        One ciphertext payload per chunk of :attr:`batch_size` rows, the last chunk padded with
        copies of its last row; the envelope's ``n_rows`` tells :meth:`decrypt_integers` how
        many results to keep. ``check_range`` as in :meth:`quantize`.
        """
        info = self._require_keys()
        q = self.quantize(x, check_range=check_range)
        payloads = tuple(self._client.encrypt(chunk).serialize() for chunk in self.part.chunks(q))
        return Envelope(
            "inputs", self.model_id, info.key_id, payloads, {"n_rows": len(q)}
        ).to_bytes()

    def decrypt_integers(self, results: bytes) -> np.ndarray:
        """Deserialize and decrypt results: output accumulators, int64 (n_rows, n_outputs).

        Raises:
            EnvelopeError: results of another model or key, corrupt, or whose payload count
                does not match their ``n_rows`` and the batch size.
        """
        info = self._require_keys()
        env = Envelope.from_bytes(
            results, kind="outputs", model_id=self.model_id, key_id=info.key_id, what="results"
        )
        n_rows = self._rows_of(env)
        fhe = _fhe()
        try:
            chunks = [
                np.asarray(self._client.decrypt(fhe.Value.deserialize(p))) for p in env.payloads
            ]
        except RuntimeError as exc:
            raise EnvelopeError(f"results cannot be decrypted (corrupt ciphertext): {exc}") from exc
        expected = self.batch_size * self.part.n_outputs
        for chunk in chunks:
            if chunk.size != expected:
                raise EnvelopeError(
                    f"results hold ciphertexts of {chunk.size} values, expected {expected} "
                    f"({self.batch_size} row(s) of {self.part.n_outputs} outputs)"
                )
        # The circuit returns the output accumulators shifted to be non-negative.
        return self.part.unshift(self.part.trim(chunks, n_rows))

    def _rows_of(self, env: Envelope) -> int:
        """The rows a result envelope answers for, checked against its payload count."""
        n_rows = env.meta.get("n_rows")
        if n_rows is None and self.batch_size == 1:
            return len(env.payloads)  # one row per payload: nothing to trim
        if not isinstance(n_rows, int) or isinstance(n_rows, bool) or n_rows < 1:
            raise EnvelopeError(
                f"results: malformed row count {n_rows!r} (expected the n_rows that encrypt wrote)"
            )
        if self.part.n_chunks(n_rows) != len(env.payloads):
            raise EnvelopeError(
                f"results hold {len(env.payloads)} ciphertexts for {n_rows} rows, expected "
                f"{self.part.n_chunks(n_rows)} ({self.batch_size} row(s) per ciphertext)"
            )
        return n_rows

    def decrypt_raw(self, results: bytes) -> np.ndarray:
        """Decrypted and dequantized float outputs (n_rows, n_outputs)."""
        return self.part.dequantize(self.decrypt_integers(results))

    def decrypt(self, results: bytes) -> np.ndarray:
        """Decrypted predictions after post-processing (labels, values or raw outputs)."""
        return self.part.postprocess(self.decrypt_raw(results))

    def check_proba(self) -> None:
        """Refuse class probabilities for a model without classes.

        Raises:
            InvalidParameterError: the model is a regressor, or has a single output (a value:
                its softmax is 1 on every row).
        """
        spec = self.part.output_spec
        if spec.kind == "regressor" or self.part.n_outputs == 1:
            what = "a regressor" if spec.kind == "regressor" else "a model with a single output"
            raise InvalidParameterError(
                f"class probabilities: this model is {what}; its results are values, not "
                "class scores (decrypt them without probabilities)"
            )

    def decrypt_proba(self, results: bytes) -> np.ndarray:
        """Softmax of the decrypted outputs (classifiers).

        Raises:
            InvalidParameterError: see :meth:`check_proba`.
        """
        self.check_proba()
        return softmax(self.decrypt_raw(results))
