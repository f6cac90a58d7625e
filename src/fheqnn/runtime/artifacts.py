"""Compiled-model folders: a fixed set of files plus a manifest of versions and checksums.

Folder layout (every file listed in ``manifest.json`` with its size and SHA-256):

- ``server.zip``: the Concrete server (compiled via MLIR, portable): what a server needs.
- ``program.json``: our integer IR (weights included): the interpreter and the reports.
- ``client.specs``: Concrete's client specifications (key and encoding parameters).
- ``client.json``: our client part: input quantizer, output dequantization, post-processing.
- ``report.json``: the per-layer bit-width report and compile statistics.
- ``manifest.json``: format, versions of the packages that made it, checksums, the model id.

Writing is atomic (a temporary folder renamed into place); loading verifies everything first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import concrete_seam
from ..errors import FheqnnError

logger = logging.getLogger(__name__)

FORMAT_NAME = "fheqnn-compiled-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SERVER_FILE = "server.zip"
PROGRAM_FILE = "program.json"
CLIENT_SPECS_FILE = "client.specs"
CLIENT_FILE = "client.json"
REPORT_FILE = "report.json"
REQUIRED_FILES = (SERVER_FILE, PROGRAM_FILE, CLIENT_SPECS_FILE, CLIENT_FILE, REPORT_FILE)
CLIENT_FILES = (CLIENT_SPECS_FILE, CLIENT_FILE)

# Packages whose version is recorded; a different concrete-python cannot load the server part.
RECORDED_PACKAGES = ("fheqnn", "concrete-python", "numpy", "onnx", "torch", "brevitas")
MUST_MATCH = ("concrete-python",)


class ArtifactError(FheqnnError, ValueError):
    """A compiled-model or key folder is missing, incomplete, tampered with or incompatible."""


def package_versions() -> dict[str, str]:
    """Installed versions of the recorded packages."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def key_id_of(evaluation_keys: bytes) -> str:
    """Identity of a key set: a hash of its serialized evaluation keys."""
    return sha256_bytes(evaluation_keys)[:32]


def model_id_of(files: dict[str, dict[str, Any]]) -> str:
    """Identity of a compiled model: a hash of its files' checksums."""
    joined = "\n".join(f"{name}:{files[name]['sha256']}" for name in sorted(files))
    return sha256_bytes(joined.encode())[:32]


def check_destination(target: Path, *, overwrite: bool = False, what: str = "folder") -> None:
    """Refuse to write ``target`` when it is a file, or a non-empty folder without ``overwrite``.

    Called before any long step (training, compiling, key generation), so that a destination
    that cannot be used is found before the work is done, not after.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{what} {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ArtifactError(
            f"{what} {target} already exists and is not empty; it is never overwritten silently "
            "(choose another folder, or pass overwrite=True / --overwrite to replace it)"
        )


def write_folder_atomically(
    target: Path, write: Any, *, overwrite: bool = False, mode: int | None = None
) -> None:
    """Create ``target`` by calling ``write(tmp_folder)`` then renaming the folder into place.

    A failure anywhere leaves ``target`` as it was. An existing non-empty ``target`` is an error
    unless ``overwrite``.
    """
    target = Path(target)
    check_destination(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        if overwrite and target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                # rename() onto a folder succeeds only if it is empty: something that appeared
                # there meanwhile (another keygen, say) is never replaced.
                os.rename(tmp, target)
            except OSError as exc:
                raise ArtifactError(
                    f"{target} appeared while it was being written and is not empty; "
                    "nothing was replaced"
                ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_folder(
    target: Path, files: dict[str, bytes], extra: dict[str, Any], *, overwrite: bool = False
) -> dict[str, Any]:
    """Write the files of a compiled model and its manifest atomically; returns the manifest."""
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ArtifactError(f"cannot save a compiled model without {missing}")
    entries = {
        name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in files.items()
    }
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_id": model_id_of(entries),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        "files": entries,
        **extra,
    }

    def write(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    write_folder_atomically(Path(target), write, overwrite=overwrite)
    return manifest


def save_compiled_model(model: Any, target: Path, *, overwrite: bool = False) -> str:
    """Write a compiled model (a ``fheqnn.compiler.api.CompiledModel``) as a folder.

    Returns:
        The model id that keys and ciphertexts will refer to.
    """
    from ..compiler.serialize import program_to_dict

    check_destination(target, overwrite=overwrite, what="compiled model folder")
    files = {
        SERVER_FILE: concrete_seam.server_bytes(model.circuit),
        PROGRAM_FILE: json.dumps(program_to_dict(model.program)).encode(),
        CLIENT_SPECS_FILE: concrete_seam.client_specs_bytes(model.circuit),
        CLIENT_FILE: json.dumps(model.contract.to_dict()).encode(),
        REPORT_FILE: json.dumps(model.summary(), indent=2).encode(),
    }
    extra = {"n_features": model.program.n_features, "n_outputs": model.program.n_outputs}
    manifest = write_model_folder(Path(target), files, extra, overwrite=overwrite)
    logger.info("saved compiled model %s to %s", manifest["model_id"], target)
    return str(manifest["model_id"])


@dataclass(frozen=True)
class ModelFolder:
    """A verified compiled-model folder."""

    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        """The model's identity (ties keys and ciphertexts to it)."""
        return str(self.manifest["model_id"])

    def file(self, name: str) -> Path:
        """Path of one of the folder's files."""
        return self.path / name

    def read_json(self, name: str) -> Any:
        """Parse one of the folder's JSON files."""
        return json.loads(self.file(name).read_text())


def open_model_folder(folder: str | Path, *, need: tuple[str, ...] = REQUIRED_FILES) -> ModelFolder:
    """Verify a compiled-model folder: manifest, versions, presence, size and checksum of files.

    Args:
        folder: the folder.
        need: the files this caller will read (a client needs only the client part).

    Raises:
        ArtifactError: naming the missing, truncated or tampered file, or the version mismatch.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ArtifactError(f"compiled model folder {str(path)!r} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: {MANIFEST} is missing: not a compiled model folder")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{manifest_path} is not valid JSON (truncated or edited?): {exc}"
        ) from exc
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}"
        )
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path} does not describe a compiled model (no file list)")
    versions = manifest.get("versions")
    versions = versions if isinstance(versions, dict) else {}
    installed = package_versions()
    for name in MUST_MATCH:
        if versions.get(name) != installed[name]:
            raise ArtifactError(
                f"{path} was compiled with {name} {versions.get(name)}, but {installed[name]} is "
                "installed: recompile the model with the installed version"
            )
    files = manifest["files"]
    if not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
        for e in files.values()
    ):
        raise ArtifactError(f"{manifest_path}: malformed file entries")
    if model_id_of(files) != manifest.get("model_id"):
        raise ArtifactError(f"{manifest_path}: the model id does not match the file checksums")
    for name in need:
        entry = files.get(name)
        if entry is None:
            raise ArtifactError(f"{path}: the manifest does not list {name}")
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(
                f"{file}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            )
        if sha256_file(file) != entry["sha256"]:
            raise ArtifactError(f"{file}: checksum mismatch: the file was modified after saving")
    return ModelFolder(path, manifest)
