"""The client part of a compiled model as one zip archive, and its safe extraction.

The archive holds the manifest and the client files only (:data:`CLIENT_FILES`): the key and
encoding parameters and the input / output processing, never the server program nor the
weights. Extraction accepts exactly those names (no paths, no links), bounds every size, writes
the folder atomically and verifies it against its manifest before it appears.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ..runtime.artifacts import (
    CLIENT_FILES,
    MANIFEST,
    ArtifactError,
    ModelFolder,
    open_model_folder,
    write_folder_atomically,
)

ARCHIVE_FILES = (MANIFEST, *CLIENT_FILES)
# Client specs and processing are kilobytes to a few MB; this bounds a hostile archive.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_ARCHIVE_BYTES = 3 * MAX_MEMBER_BYTES
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def client_archive(folder: ModelFolder) -> bytes:
    """Zip the manifest and client files of a verified model folder (deterministic bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ARCHIVE_FILES:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, folder.file(name).read_bytes())
    return buffer.getvalue()


def _read_members(data: bytes) -> dict[str, bytes]:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArtifactError(f"client archive of {len(data)} bytes is larger than allowed")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"the client archive is not a zip file: {exc}") from exc
    members: dict[str, bytes] = {}
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if sorted(names) != sorted(ARCHIVE_FILES):
            raise ArtifactError(
                f"the client archive holds {sorted(names)}, "
                f"expected exactly {sorted(ARCHIVE_FILES)}"
            )
        for info in infos:
            if info.is_dir() or info.file_size > MAX_MEMBER_BYTES:
                raise ArtifactError(f"client archive member {info.filename!r} is not acceptable")
            try:
                with archive.open(info) as handle:
                    # Read one byte more than declared: a lying header cannot inflate past it.
                    content = handle.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ArtifactError(f"client archive member {info.filename!r}: {exc}") from exc
            if len(content) != info.file_size:
                raise ArtifactError(f"client archive member {info.filename!r} has a wrong size")
            members[info.filename] = content
    return members


def extract_client_archive(
    data: bytes, target: str | Path, *, model_id: str | None = None, overwrite: bool = False
) -> ModelFolder:
    """Write a client archive to a new folder, verified, atomically.

    Args:
        data: the archive (bytes).
        target: folder to create; an existing non-empty one is refused unless ``overwrite``.
        model_id: the model the archive must hold (checked before anything is written).
        overwrite: replace an existing folder (only by a complete, verified one).

    Returns:
        The verified (client-only) model folder.

    Raises:
        ArtifactError: the archive is malformed, holds other names, is too large, does not
            verify against its manifest, or is not the model asked for; nothing is written.
    """
    members = _read_members(data)
    target = Path(target)

    def write(folder: Path) -> None:
        for name, content in members.items():
            (folder / name).write_bytes(content)
        # Verify before the folder appears under its name.
        checked = open_model_folder(folder, need=CLIENT_FILES)
        if model_id is not None and checked.model_id != model_id:
            raise ArtifactError(
                f"the server sent compiled model {checked.model_id}, not {model_id}"
            )

    write_folder_atomically(target, write, overwrite=overwrite)
    return open_model_folder(target, need=CLIENT_FILES)
