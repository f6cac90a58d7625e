"""Serialized ciphertexts and evaluation keys, labelled with the model and key they belong to.

Layout (format 2): ``MAGIC``, the 32-byte SHA-256 of everything that follows it, a 4-byte
big-endian header length, a JSON header, then for each payload an 8-byte big-endian length and
the bytes (Concrete's own serialization). The header says what the payloads are (``kind``), for
which compiled model (``model_id``) and which key (``key_id``), so that a ciphertext for another
circuit or key is refused before it reaches Concrete.

The checksum covers the header and the payloads together: one flipped bit anywhere, or labels
moved from one envelope to another's payloads, is refused before Concrete sees the bytes. It is
an integrity check, not a signature: someone who rewrites the labels on purpose can recompute it
(authenticating senders is the transport's job, e.g. TLS).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import FheqnnError

MAGIC = b"FHEQNN-ENVELOPE\x02"
#: Envelopes of format 1 (no checksum), written by fheqnn before the checksum was added.
MAGIC_V1 = b"FHEQNN-ENVELOPE\x01"
KINDS = ("inputs", "outputs", "evaluation_keys")
DIGEST_BYTES = 32
#: Largest header we read (bytes): ours are ~200 bytes.
MAX_HEADER_BYTES = 1 << 16


class EnvelopeError(FheqnnError, ValueError):
    """Serialized data that is not ours, truncated, corrupt, or for another model or key."""


#: What each kind of envelope holds and which step writes it, for messages.
_KIND_WORDS = {
    "inputs": "encrypted rows (written by 'encrypt')",
    "outputs": "encrypted results (written by 'run')",
    "evaluation_keys": "evaluation keys (written by 'keygen')",
}


@dataclass(frozen=True)
class Envelope:
    """Payloads with their labels."""

    kind: str
    model_id: str
    key_id: str
    payloads: tuple[bytes, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialize, with the checksum over header and payloads.

        Raises:
            EnvelopeError: an unknown kind, no payload, an empty payload, or labels or meta
                that are not JSON strings / objects.
        """
        if self.kind not in KINDS:
            raise EnvelopeError(f"unknown envelope kind {self.kind!r}, expected one of {KINDS}")
        if not isinstance(self.model_id, str) or not isinstance(self.key_id, str):
            raise EnvelopeError("model_id and key_id must be strings")
        if not self.payloads or not all(
            isinstance(p, bytes | bytearray) and len(p) > 0 for p in self.payloads
        ):
            raise EnvelopeError(
                f"an envelope of {self.kind} needs at least one non-empty bytes payload, got "
                f"{len(self.payloads)} payload(s)"
            )
        header = _header_bytes(self.kind, self.model_id, self.key_id, len(self.payloads), self.meta)
        parts = [struct.pack(">I", len(header)), header]
        for payload in self.payloads:
            parts += [struct.pack(">Q", len(payload)), bytes(payload)]
        body = b"".join(parts)
        return MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        kind: str,
        model_id: str | None = None,
        key_id: str | None = None,
        what: str = "data",
    ) -> Envelope:
        """Parse, verify the checksum, and check the labels.

        Args:
            data: the serialized envelope.
            kind: the kind expected (``inputs``, ``outputs`` or ``evaluation_keys``).
            model_id: the compiled model the payloads must belong to (``None``: any).
            key_id: the key they must have been made with (``None``: any).
            what: how messages name the data (a file name, say).

        Raises:
            EnvelopeError: every problem, named: not an envelope, an older format, truncated,
                corrupt (checksum), malformed header, another kind, model or key.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeError(f"{what} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        pos = _verify_checksum(data, what)
        header, pos = _read_header(data, pos, what)
        payloads = _read_payloads(data, pos, header["count"], what)
        meta = header.get("meta", {})
        env = cls(header["kind"], header["model_id"], header["key_id"], payloads, meta)
        _check_labels(env, kind, model_id, key_id, what)
        return env

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        kind: str,
        model_id: str | None = None,
        key_id: str | None = None,
        what: str = "data",
        max_bytes: int | None = None,
    ) -> Envelope:
        """:meth:`from_bytes` of a file, without ever holding the whole file in memory.

        The size is checked first, the checksum is computed over the file in chunks, then
        each payload is read into its own bytes object: the memory taken is the payloads',
        not twice or more the file's (a request body of hundreds of MB stays on disk until
        it is known to be intact, and is never read if it is too large).

        Args:
            path: the file.
            max_bytes: the most the file may hold (``None``: no limit).
            kind, model_id, key_id, what: as in :meth:`from_bytes`.

        Raises:
            EnvelopeError: as :meth:`from_bytes`, and a file too large or unreadable.
        """
        path = Path(path)
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise EnvelopeError(
                        f"{what}: {size} bytes, more than the {max_bytes} this model's data "
                        "can take"
                    )
                head = handle.read(len(MAGIC) + DIGEST_BYTES + 4)
                pos = _verify_checksum(head, what, rest=handle)
                handle.seek(pos)
                (header_len,) = struct.unpack(">I", handle.read(4))
                if header_len > MAX_HEADER_BYTES or size < pos + 4 + header_len:
                    raise EnvelopeError(f"{what}: malformed header (length {header_len})")
                raw = struct.pack(">I", header_len) + handle.read(header_len)
                header, _ = _read_header(raw, 0, what)
                payloads = _read_payload_stream(handle, size, header["count"], what)
        except OSError as exc:
            raise EnvelopeError(f"{what} cannot be read: {exc.strerror or exc}") from exc
        env = cls(
            header["kind"], header["model_id"], header["key_id"], payloads, header.get("meta", {})
        )
        _check_labels(env, kind, model_id, key_id, what)
        return env


def envelope_bytes(
    kind: str,
    model_id: str,
    key_id: str,
    payload_bytes: tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> int:
    """The exact size of the envelope :meth:`Envelope.to_bytes` writes for payloads of these
    sizes (e.g. what a model's evaluation keys take on the wire)."""
    header = _header_bytes(kind, model_id, key_id, len(payload_bytes), meta or {})
    return len(MAGIC) + DIGEST_BYTES + 4 + len(header) + sum(8 + n for n in payload_bytes)


def _header_bytes(kind: str, model_id: str, key_id: str, count: int, meta: dict[str, Any]) -> bytes:
    try:
        return json.dumps(
            {
                "kind": kind,
                "model_id": model_id,
                "key_id": key_id,
                "count": count,
                "meta": dict(meta),
            },
            sort_keys=True,
            allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"envelope meta must be plain JSON data: {exc}") from exc


#: Bytes hashed at a time when a file's checksum is verified.
_HASH_CHUNK = 1 << 20


def _verify_checksum(data: bytes, what: str, rest: BinaryIO | None = None) -> int:
    """Check the magic bytes and the checksum; returns where the header length starts.

    With ``rest``, ``data`` is only the start of the envelope (magic, checksum, 4 bytes) and
    the checksum covers its last 4 bytes and everything ``rest`` yields until its end.
    """
    if data.startswith(MAGIC_V1):
        raise EnvelopeError(
            f"{what} is an envelope of format 1, written by an older fheqnn without an "
            "integrity check; it is no longer read: encrypt the rows again (or generate "
            "the keys again) with this version"
        )
    if not data.startswith(MAGIC):
        raise EnvelopeError(
            f"{what} is not an fheqnn envelope (wrong magic bytes): expected a file "
            "written by 'fheqnn encrypt', 'run' or 'keygen'"
        )
    pos = len(MAGIC)
    if len(data) < pos + DIGEST_BYTES + 4:
        raise EnvelopeError(f"{what} is truncated ({len(data)} bytes: no header)")
    digest = data[pos : pos + DIGEST_BYTES]
    pos += DIGEST_BYTES
    hasher = hashlib.sha256(memoryview(data)[pos:])
    if rest is not None:
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        while count := rest.readinto(buffer):
            hasher.update(view[:count])
    if hasher.digest() != digest:
        raise EnvelopeError(
            f"{what} is corrupt: its checksum does not match its content (truncated, "
            "modified, or labels moved from other data); nothing was decrypted or run"
        )
    return pos


def _read_header(data: bytes, pos: int, what: str) -> tuple[dict[str, Any], int]:
    """The JSON header at ``pos`` (labels, a payload count of at least 1, meta an object), and
    where the payloads start."""
    (header_len,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if header_len > MAX_HEADER_BYTES or len(data) < pos + header_len:
        raise EnvelopeError(f"{what}: malformed header (length {header_len})")
    try:
        header = json.loads(data[pos : pos + header_len].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"{what}: corrupt header: {exc}") from exc
    pos += header_len
    fields_ok = isinstance(header, dict) and all(
        isinstance(header.get(k), str) for k in ("kind", "model_id", "key_id")
    )
    count = header.get("count") if isinstance(header, dict) else None
    if not fields_ok or not isinstance(count, int) or isinstance(count, bool):
        raise EnvelopeError(f"{what}: malformed header")
    if count < 1:
        raise EnvelopeError(f"{what} holds no payload (count {count}); expected at least one")
    if not isinstance(header.get("meta", {}), dict):
        raise EnvelopeError(f"{what}: malformed header (meta)")
    return header, pos


def _read_payloads(data: bytes, pos: int, count: int, what: str) -> tuple[bytes, ...]:
    """The ``count`` length-prefixed payloads from ``pos`` to the very end of ``data``."""
    payloads = []
    for i in range(count):
        if len(data) < pos + 8:
            raise EnvelopeError(f"{what} is truncated (payload {i} length missing)")
        (size,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        if size == 0 or len(data) < pos + size:
            raise EnvelopeError(
                f"{what} is truncated (payload {i}: {len(data) - pos} of {size} bytes)"
            )
        payloads.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise EnvelopeError(f"{what} has {len(data) - pos} unexpected trailing bytes")
    return tuple(payloads)


def _read_payload_stream(handle: BinaryIO, size: int, count: int, what: str) -> tuple[bytes, ...]:
    """:func:`_read_payloads` from an open file of ``size`` bytes, at the first payload."""
    payloads = []
    for i in range(count):
        raw = handle.read(8)
        if len(raw) < 8:
            raise EnvelopeError(f"{what} is truncated (payload {i} length missing)")
        (length,) = struct.unpack(">Q", raw)
        left = size - handle.tell()
        if length == 0 or left < length:
            raise EnvelopeError(f"{what} is truncated (payload {i}: {left} of {length} bytes)")
        payload = handle.read(length)
        if len(payload) != length:
            raise EnvelopeError(f"{what} changed while it was read")
        payloads.append(payload)
    trailing = size - handle.tell()
    if trailing:
        raise EnvelopeError(f"{what} has {trailing} unexpected trailing bytes")
    return tuple(payloads)


def _check_labels(
    env: Envelope, kind: str, model_id: str | None, key_id: str | None, what: str
) -> None:
    """Refuse an envelope of another kind, compiled model or key than expected."""
    if env.kind != kind:
        raise EnvelopeError(
            f"{what} holds {_KIND_WORDS.get(env.kind, env.kind)}, expected "
            f"{_KIND_WORDS.get(kind, kind)}"
        )
    if model_id is not None and env.model_id != model_id:
        raise EnvelopeError(
            f"{what}: made for compiled model {env.model_id}, not for this one "
            f"({model_id}); use files made with this model (or this model's folder)"
        )
    if key_id is not None and env.key_id != key_id:
        raise EnvelopeError(
            f"{what}: made with key {env.key_id}, not with key {key_id}; use the key "
            "folder these files were made with, or encrypt again with this one"
        )


def read_envelope_file(path: str | Path, *, max_bytes: int, what: str) -> bytes:
    """The bytes of an envelope file, its size checked before it is read.

    Args:
        path: the file.
        max_bytes: the most such a file can hold for this model (from the sizes the model
            implies: ciphertext bytes per row, or evaluation key bytes).
        what: how messages name it.

    Raises:
        EnvelopeError: missing, not a file, unreadable, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise EnvelopeError(f"{what} file {str(path)!r} does not exist or is not a file")
        size = path.stat().st_size
        if size > max_bytes:
            raise EnvelopeError(
                f"{what} file {path} has {size} bytes, more than the {max_bytes} this model's "
                "data can take: not a file written for this model"
            )
        return path.read_bytes()
    except OSError as exc:
        raise EnvelopeError(f"{what} file {path} cannot be read: {exc.strerror or exc}") from exc
