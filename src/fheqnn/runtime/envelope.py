"""Serialized ciphertexts and evaluation keys, labelled with the model and key they belong to.

Layout: ``MAGIC``, a 4-byte big-endian header length, a JSON header, then for each payload an
8-byte big-endian length and the bytes (Concrete's own serialization). The header says what the
payload is (``kind``), for which compiled model (``model_id``) and which key (``key_id``), so that
a ciphertext for another circuit or key is rejected before it reaches Concrete.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import FheqnnError

MAGIC = b"FHEQNN-ENVELOPE\x01"
KINDS = ("inputs", "outputs", "evaluation_keys")


class EnvelopeError(FheqnnError, ValueError):
    """Serialized data that is not ours, truncated, or for another model or key."""


@dataclass(frozen=True)
class Envelope:
    """Payloads with their labels."""

    kind: str
    model_id: str
    key_id: str
    payloads: tuple[bytes, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialize."""
        if self.kind not in KINDS:
            raise EnvelopeError(f"unknown envelope kind {self.kind!r}")
        header = json.dumps(
            {
                "kind": self.kind,
                "model_id": self.model_id,
                "key_id": self.key_id,
                "count": len(self.payloads),
                "meta": self.meta,
            },
            sort_keys=True,
        ).encode()
        parts = [MAGIC, struct.pack(">I", len(header)), header]
        for payload in self.payloads:
            parts += [struct.pack(">Q", len(payload)), payload]
        return b"".join(parts)

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
        """Parse and check labels; every mismatch is a clear :class:`EnvelopeError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeError(f"{what} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(MAGIC):
            raise EnvelopeError(f"{what} is not an fheqnn envelope (wrong magic bytes)")
        pos = len(MAGIC)
        if len(data) < pos + 4:
            raise EnvelopeError(f"{what} is truncated (no header)")
        (header_len,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if len(data) < pos + header_len:
            raise EnvelopeError(f"{what} is truncated (header cut)")
        try:
            header = json.loads(data[pos : pos + header_len])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"{what}: corrupt header: {exc}") from exc
        pos += header_len
        fields_ok = isinstance(header, dict) and all(
            isinstance(header.get(k), str) for k in ("kind", "model_id", "key_id")
        )
        count = header.get("count") if isinstance(header, dict) else None
        if not fields_ok or not isinstance(count, int) or count < 0:
            raise EnvelopeError(f"{what}: malformed header")
        if not isinstance(header.get("meta", {}), dict):
            raise EnvelopeError(f"{what}: malformed header")
        payloads = []
        for i in range(count):
            if len(data) < pos + 8:
                raise EnvelopeError(f"{what} is truncated (payload {i} length missing)")
            (size,) = struct.unpack_from(">Q", data, pos)
            pos += 8
            if len(data) < pos + size:
                raise EnvelopeError(
                    f"{what} is truncated (payload {i}: {len(data) - pos} of {size} bytes)"
                )
            payloads.append(data[pos : pos + size])
            pos += size
        if pos != len(data):
            raise EnvelopeError(f"{what} has {len(data) - pos} unexpected trailing bytes")
        env = cls(
            header["kind"],
            header["model_id"],
            header["key_id"],
            tuple(payloads),
            header.get("meta", {}),
        )
        if env.kind != kind:
            raise EnvelopeError(f"{what} holds {env.kind}, expected {kind}")
        if model_id is not None and env.model_id != model_id:
            raise EnvelopeError(
                f"{what} belongs to compiled model {env.model_id}, not to this one ({model_id})"
            )
        if key_id is not None and env.key_id != key_id:
            raise EnvelopeError(f"{what} was made with key {env.key_id}, not with key {key_id}")
        return env
