"""Compiled models as plain data, for Ray processes on machines that share no disk.

:func:`pack` reads a verified model folder into a dict (id, name, file bytes) that travels with
a Ray Serve deployment or through the object store; :func:`unpack` writes it back on the node
that needs it. Unpacked folders are content-addressed, ``<tmp>/fheqnn-models/<model id>/<name>``,
and written whole through a temporary folder and a rename: processes of one node share one copy,
a process killed halfway leaves no half-written folder in place, and a folder left behind is
reused, never duplicated (its files are compared with the shipped bytes first; the service
verifies the manifest's checksums again when it loads the model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..runtime.artifacts import ArtifactError, ModelFolder
from .keystore import is_id

#: Under the system's temporary folder: where unpacked models live on each node.
ROOT_NAME = "fheqnn-models"


def pack(folder: ModelFolder, names: tuple[str, ...]) -> dict[str, Any]:
    """The files ``names`` of a verified model folder, with its id and name."""
    files = {name: folder.file(name).read_bytes() for name in names}
    return {"model_id": folder.model_id, "name": folder.path.name, "files": files}


def _same(target: Path, files: dict[str, bytes]) -> bool:
    """Whether ``target`` holds exactly these files with these bytes."""
    try:
        return {p.name for p in target.iterdir()} == set(files) and all(
            (target / name).read_bytes() == data for name, data in files.items()
        )
    except OSError:
        return False


def unpack(packed: dict[str, Any], root: Path | None = None) -> Path:
    """The folder of a packed model on this node (written if it is not there already).

    Raises:
        ArtifactError: the packed model's id or file names are malformed.
    """
    model_id, files = str(packed["model_id"]), dict(packed["files"])
    if not is_id(model_id):
        raise ArtifactError(f"a shipped model with a malformed id {model_id!r}")
    for name in files:
        if not name or Path(name).name != name or name.startswith("."):
            raise ArtifactError(f"a shipped model with a file named {name!r}")
    base = (root or Path(tempfile.gettempdir()) / ROOT_NAME) / model_id
    target = base / (Path(str(packed.get("name") or "model")).name or "model")
    if _same(target, files):
        return target
    base.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
    try:
        for name, data in files.items():
            (fresh / name).write_bytes(data)
        if _same(target, files):  # another process of this node wrote it meanwhile
            return target
        if target.exists():  # damaged or stale: moved aside, then replaced
            old = base / f".old-{uuid.uuid4().hex}"
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(fresh, target)
    except OSError:
        if not _same(target, files):  # another process of this node did not win the race
            raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return target
