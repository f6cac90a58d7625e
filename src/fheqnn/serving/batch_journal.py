"""The journal of a resumable batch job: the decrypted results of its finished chunks of rows.

A job scores ``n_rows`` rows in chunks of ``chunk_rows`` (the last one shorter). Its journal is a
folder beside the job's output (``<out>.partial/``) holding

- ``journal.json``: what the results belong to: the model id, the key id, the number of rows and
  a SHA-256 of the rows (float64, as checked for the model), and the chunk size;
- ``chunk-<index>.npy``: the decrypted float outputs of one finished chunk
  ``(rows, n_outputs)``, written atomically (temporary file, fsync, rename) when it arrives.

The journal is created atomically with its header on the first save, so that checking a job
against an existing journal changes nothing on disk. Chunks hold outputs before
post-processing: the output's format (``.csv``, ``.npy``, row ids) is chosen when the job ends.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FheqnnError
from ..fileio import atomic_write_bytes, clean_stale, temp_prefix

logger = logging.getLogger(__name__)

FORMAT_NAME = "fheqnn-batch-journal"
FORMAT_VERSION = 1
HEADER_FILE = "journal.json"
SUFFIX = ".partial"
_CHUNK = re.compile(r"chunk-(\d{6,})\.npy")

#: What a difference in each header field means, for the error message.
_FIELDS = {
    "model_id": "another model",
    "key_id": "other keys",
    "n_rows": "another number of rows",
    "rows_sha256": "other input rows",
    "chunk_rows": "another chunk size",
}


class JournalError(FheqnnError, ValueError):
    """A journal folder that is not a journal of ours, or is incomplete."""


class JournalMismatchError(JournalError):
    """The journal of another job (other model, keys, rows or chunk size)."""


def journal_path(out: str | Path) -> Path:
    """The journal folder of the output file ``out``: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def rows_digest(x: np.ndarray) -> str:
    """SHA-256 of rows as float64 (their shape included): hex digest."""
    rows = np.ascontiguousarray(x, dtype=np.float64)
    digest = hashlib.sha256(repr(rows.shape).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def job_header(model_id: str, key_id: str, x: np.ndarray, chunk_rows: int) -> dict[str, Any]:
    """The header of the journal of a job scoring the rows ``x`` in chunks of ``chunk_rows``."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_id": model_id,
        "key_id": key_id,
        "n_rows": len(x),
        "rows_sha256": rows_digest(x),
        "chunk_rows": int(chunk_rows),
    }


def _read_header(path: Path) -> dict[str, Any] | None:
    """The header of the journal folder ``path``; ``None`` if it is not a journal of ours."""
    try:
        header = json.loads((path / HEADER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        return None
    return header


class ChunkJournal:
    """The journal of one job (see the module). Use :meth:`open`.

    Attributes:
        path: the journal folder.
        header: the job's header (:func:`job_header`).
        n_outputs: outputs per row.
    """

    def __init__(self, path: Path, header: dict[str, Any], n_outputs: int, *, stale: bool):
        self.path = path
        self.header = header
        self.n_outputs = n_outputs
        self._stale = stale  # a journal of another job is there, to be replaced at first save

    @classmethod
    def open(
        cls, path: str | Path, header: dict[str, Any], n_outputs: int, *, replace: bool = False
    ) -> ChunkJournal:
        """The journal at ``path`` for the job of ``header``; nothing is written.

        Args:
            path: the journal folder (it may not exist yet).
            header: the job's header (:func:`job_header`).
            n_outputs: outputs per row of the model.
            replace: a journal of another job at ``path`` is replaced (at the first save)
                instead of refused.

        Raises:
            JournalError: ``path`` is not a journal of ours (never replaced).
            JournalMismatchError: (without ``replace``) the journal of another job, naming
                what differs.
        """
        path = Path(path)
        if path.exists() or path.is_symlink():
            found = _read_header(path) if path.is_dir() and not path.is_symlink() else None
            if found is None:
                raise JournalError(
                    f"{path} exists and is not a journal of fheqnn's batch jobs: it is never "
                    "replaced; remove it yourself or write to another file"
                )
            if found != header:
                if not replace:
                    raise JournalMismatchError(
                        f"{path} holds finished chunks of another job "
                        f"({_differences(found, header)})"
                    )
                return cls(path, header, n_outputs, stale=True)
        return cls(path, header, n_outputs, stale=False)

    @property
    def n_rows(self) -> int:
        return int(self.header["n_rows"])

    @property
    def chunk_rows(self) -> int:
        return int(self.header["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def bounds(self, index: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of chunk ``index``."""
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def _file(self, index: int) -> Path:
        return self.path / f"chunk-{index:06d}.npy"

    def done(self) -> set[int]:
        """Indices of the chunks whose results are saved and readable."""
        if self._stale or not self.path.is_dir():
            return set()
        found = set()
        for entry in self.path.iterdir():
            match = _CHUNK.fullmatch(entry.name)
            if match and int(match.group(1)) < self.n_chunks:
                index = int(match.group(1))
                if self._load(index) is not None:
                    found.add(index)
        return found

    def rows_done(self) -> int:
        """Rows whose results are saved."""
        return sum(b - a for a, b in map(self.bounds, self.done()))

    def _load(self, index: int) -> np.ndarray | None:
        """The saved results of chunk ``index``; ``None`` if missing or not as expected."""
        a, b = self.bounds(index)
        try:
            raw = np.load(self._file(index), allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("%s cannot be read (%s): its chunk is run again", self._file(index), exc)
            return None
        if raw.shape != (b - a, self.n_outputs) or raw.dtype != np.float64:
            logger.warning(
                "%s holds %s %s: its chunk is run again", self._file(index), raw.shape, raw.dtype
            )
            return None
        return raw

    def save(self, index: int, raw: np.ndarray) -> None:
        """Save the decrypted outputs of chunk ``index`` (atomically; the journal is created
        with its header first, replacing a stale one)."""
        if self._stale or not self.path.is_dir():
            self._create()
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(raw, dtype=np.float64), allow_pickle=False)
        atomic_write_bytes(self._file(index), buffer.getvalue())

    def _create(self) -> None:
        """Put an empty journal with its header at :attr:`path` (replacing a stale one)."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.path)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(self.path.name)))
        try:
            (tmp / HEADER_FILE).write_text(json.dumps(self.header, indent=1) + "\n")
            if self._stale:
                shutil.rmtree(self.path)
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._stale = False

    def gather(self) -> np.ndarray:
        """The results of every chunk, in row order ``(n_rows, n_outputs)``.

        Raises:
            JournalError: a chunk is missing or unreadable.
        """
        parts = []
        for index in range(self.n_chunks):
            raw = self._load(index)
            if raw is None:
                raise JournalError(f"{self.path}: chunk {index} is missing or unreadable")
            parts.append(raw)
        return np.concatenate(parts) if parts else np.zeros((0, self.n_outputs))

    def remove(self) -> None:
        """Delete the journal (the job's output is written)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _differences(found: dict[str, Any], header: dict[str, Any]) -> str:
    """What makes the header ``found`` of a journal differ from the job's ``header``."""

    def short(value: Any) -> str:
        text = str(value)
        return text if len(text) <= 16 else f"{text[:12]}..."

    reasons = []
    for field, meaning in _FIELDS.items():
        there, here = found.get(field), header.get(field)
        if there != here:
            reasons.append(f"{meaning}: {field} {short(there)} there, {short(here)} here")
    if not reasons:
        reasons.append(f"format version {found.get('version')}, not {FORMAT_VERSION}")
    return "; ".join(reasons)
