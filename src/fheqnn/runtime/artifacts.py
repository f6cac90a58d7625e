"""Compiled-model folders: a fixed set of files plus a manifest of versions and checksums.

Folder layout (every file listed in ``manifest.json`` with its size and SHA-256):

- ``server.zip``: the Concrete server (compiled via MLIR, portable): what a server needs.
- ``program.json``: our integer IR (weights included): the interpreter and the reports.
- ``client.specs``: Concrete's client specifications (key and encoding parameters).
- ``client.json``: our client part: input quantizer, rows per circuit call, output
  dequantization, post-processing.
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
from ..fileio import clean_stale, old_name, temp_prefix

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
#: What a server reads: the program, and the key parameters and sizes that bound its inputs.
SERVER_FILES = (SERVER_FILE, CLIENT_SPECS_FILE, REPORT_FILE)

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


def check_keys_id(env: Any) -> None:
    """Refuse an evaluation-key envelope whose key id is not the hash of its one payload, so
    that nobody can store or register other keys under a client's id.

    Raises:
        EnvelopeError: the label does not match.
    """
    from .envelope import EnvelopeError

    if len(env.payloads) != 1 or key_id_of(env.payloads[0]) != env.key_id:
        raise EnvelopeError(
            f"evaluation keys labelled {env.key_id} do not hash to that id (tampered?)"
        )


def model_id_of(files: dict[str, dict[str, Any]]) -> str:
    """Identity of a compiled model: a hash of its files' checksums."""
    joined = "\n".join(f"{name}:{files[name]['sha256']}" for name in sorted(files))
    return sha256_bytes(joined.encode())[:32]


#: Folder kinds, by the file that marks them; ``--overwrite`` replaces a folder by one of its kind.
COMPILED_MODEL, KEY_FOLDER, TRAINING_RUN = "compiled model", "key folder", "training run"
KEY_INFO_FILE = "key.json"
TRAIN_INFO_FILE = "train.json"


def folder_kind(folder: Path) -> str | None:
    """What an existing folder holds: one of the kinds above, or ``None`` (anything else).

    A compiled model has a ``manifest.json`` of our format, a key folder a ``key.json``, a
    training run a ``train.json`` (or, written by older versions, ``estimator.pkl`` with
    ``model.onnx``).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_bytes()[: 1 << 20])
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
            return COMPILED_MODEL
        return None
    if (folder / KEY_INFO_FILE).is_file():
        return KEY_FOLDER
    if (folder / TRAIN_INFO_FILE).is_file() or (
        (folder / "estimator.pkl").is_file() and (folder / "model.onnx").is_file()
    ):
        return TRAINING_RUN
    return None


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_destination(
    target: Path,
    *,
    overwrite: bool = False,
    what: str = "folder",
    kind: str | None = None,
    inputs: tuple[str | Path, ...] = (),
) -> None:
    """Refuse a destination folder that cannot, or must not, be written.

    Called before any long step (training, compiling, key generation), so that a destination
    that cannot be used is found before the work is done, not after. Refused: an existing file;
    the current folder or one of its parents; a folder that is, or holds, one of ``inputs``
    (the command's own inputs); a non-empty folder without ``overwrite``; with ``overwrite``,
    a non-empty folder that is not of ``kind``; a place this user cannot write to.

    Args:
        target: the folder to create or replace.
        overwrite: whether an existing folder of ``kind`` may be replaced.
        what: how messages name the folder.
        kind: the kind of folder written (:data:`COMPILED_MODEL`, :data:`KEY_FOLDER`,
            :data:`TRAINING_RUN`); ``None`` lets ``overwrite`` replace only empty folders.
        inputs: files or folders the command reads, which the write must not replace.

    Raises:
        ArtifactError: naming the destination and what to do instead.
    """
    target = Path(target)
    if str(target).strip() == "":
        raise ArtifactError(f"{what}: an empty path was given; name a folder to create")
    resolved = target.resolve()
    if target.exists() and not target.is_dir():
        raise ArtifactError(
            f"{what} {target} exists and is a file, not a folder: name a new folder"
        )
    if _within(Path.cwd().resolve(), resolved):
        raise ArtifactError(
            f"{what} {target} is the current folder or one of its parents: name a new folder "
            "inside it instead"
        )
    for source in inputs:
        if _within(Path(source).resolve(), resolved):
            raise ArtifactError(
                f"{what} {target} is, or holds, {source}, an input of this command: it would be "
                "replaced by its own output; write to another folder"
            )
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ArtifactError(
                f"{what} {target} already exists and is not empty: nothing is overwritten "
                "silently (choose another folder, or pass --overwrite, overwrite=True in "
                "Python, to replace it)"
            )
        found = folder_kind(target)
        if kind is None or found != kind:
            raise ArtifactError(
                f"{what} {target} holds {'a ' + found if found else 'other files'}, not a "
                f"{kind or 'folder of ours'}: --overwrite replaces only a {kind or 'folder'} of "
                "the same kind; remove it yourself or choose another folder"
            )
    _check_writable(target, what)


def _check_writable(target: Path, what: str) -> None:
    """The nearest existing folder at or above ``target``'s parent must be writable by us."""
    place = target.resolve().parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise ArtifactError(f"{what} {target}: {place} is not a folder")
    try:
        # A real probe (created and removed at once): permission bits do not tell for root, a
        # read-only mount or a pseudo file system.
        os.rmdir(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=place))
    except OSError as exc:
        raise ArtifactError(
            f"{what} {target} cannot be created: {place} is not writable "
            f"({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        raise ArtifactError(f"{what} {target} is not writable by this user")


def write_folder_atomically(
    target: Path,
    write: Any,
    *,
    overwrite: bool = False,
    mode: int | None = None,
    kind: str | None = None,
    inputs: tuple[str | Path, ...] = (),
) -> None:
    """Create ``target`` by calling ``write(tmp_folder)`` then renaming the folder into place.

    A failure or an interrupt anywhere leaves ``target`` as it was. The destination is checked
    with :func:`check_destination` (``overwrite``, ``kind``, ``inputs``). Temporaries that
    killed writers left next to ``target`` are removed first (see
    :func:`fheqnn.fileio.clean_stale`).

    Args:
        target: the folder to create or replace.
        write: called with the temporary folder to fill.
        overwrite: replace an existing folder of the same ``kind``.
        mode: permission bits of the folder (e.g. ``0o700`` for keys), set before anything is
            written into it.
        kind: the kind of folder written.
        inputs: files or folders the command reads, which must not be replaced.
    """
    target = Path(target)
    check_destination(target, overwrite=overwrite, kind=kind, inputs=inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        if overwrite and target.exists():
            old = target.with_name(old_name(target.name))
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

    write_folder_atomically(Path(target), write, overwrite=overwrite, kind=COMPILED_MODEL)
    return manifest


def save_compiled_model(model: Any, target: Path, *, overwrite: bool = False) -> str:
    """Write a compiled model (a ``fheqnn.compiler.api.CompiledModel``) as a folder.

    Returns:
        The model id that keys and ciphertexts will refer to.
    """
    from ..compiler.serialize import program_to_dict

    check_destination(
        target, overwrite=overwrite, what="compiled model folder", kind=COMPILED_MODEL
    )
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


#: Largest ``manifest.json`` / ``key.json`` we read (bytes): ours are a few kB.
MAX_INFO_BYTES = 1 << 20


def read_json_file(path: Path, what: str, *, max_bytes: int = MAX_INFO_BYTES) -> Any:
    """Parse a small JSON file of ours; every failure is an :class:`ArtifactError`.

    Args:
        path: the file.
        what: how messages name it.
        max_bytes: larger files are refused before they are read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ArtifactError(
                f"{what} {path} has {size} bytes, more than the {max_bytes} such a file can have"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    return parse_json_bytes(data, f"{what} {path}")


def read_versioned_json(
    folder: Path,
    name: str,
    *,
    folder_what: str,
    what: str,
    not_ours: str,
    fmt: str,
    version: int | tuple[int, ...],
    format_where: Path | None = None,
    hint: str = "",
) -> dict[str, Any]:
    """Read the JSON object ``folder/name`` that identifies a folder of ours, format checked.

    Args:
        folder: the folder (a compiled model, a key folder).
        name: the file naming its format (``manifest.json``, ``key.json``).
        folder_what: how messages name the folder ("compiled model folder").
        what: how messages name the file ("manifest").
        not_ours: what to say when the file holds no JSON object ("not a manifest of ours").
        fmt, version: the expected ``format`` and ``format_version`` fields (a tuple: any of
            those versions; the message names the last, the one written now).
        format_where: the path a format mismatch names (default: the file).
        hint: appended to a format mismatch (what to do about it).

    Raises:
        ArtifactError: missing folder or file, unreadable JSON, not an object, other format.
    """
    path = folder / name
    if not folder.is_dir():
        raise ArtifactError(f"{folder_what} {str(folder)!r} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{folder}: {name} is missing: not a {folder_what}")
    data = read_json_file(path, what)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds a {type(data).__name__}, expected an object: {not_ours}")
    versions = version if isinstance(version, tuple) else (version,)
    if data.get("format") != fmt or data.get("format_version") not in versions:
        raise ArtifactError(
            f"{format_where or path}: format {data.get('format')!r} "
            f"v{data.get('format_version')!r}, expected {fmt!r} v{versions[-1]}{hint}"
        )
    return data


def parse_json_bytes(data: bytes, what: str) -> Any:
    """Parse JSON bytes (UTF-8); a decoding error is an :class:`ArtifactError` naming ``what``."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{what} is not UTF-8 text (a binary or corrupt file?): {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{what} is not valid JSON (truncated or edited?): {exc}") from exc


@dataclass(frozen=True)
class ModelFolder:
    """A verified compiled-model folder.

    Its files are read through :meth:`read_bytes` / :meth:`read_json`, which check the bytes
    actually read against the manifest, so that no reader sees a file modified after the
    folder was opened.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        """The model's identity (ties keys and ciphertexts to it)."""
        return str(self.manifest["model_id"])

    def file(self, name: str) -> Path:
        """Path of one of the folder's files (for readers that need a path, e.g. Concrete's)."""
        return self.path / name

    def read_bytes(self, name: str) -> bytes:
        """The bytes of one of the folder's files, checked against the manifest."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise ArtifactError(f"{self.path}: the manifest does not list {name}")
        file = self.path / name
        try:
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise ArtifactError(
                    f"{file}: {size} bytes, the manifest says {entry['bytes']} "
                    "(truncated or replaced)"
                )
            data = file.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{file} cannot be read: {exc.strerror or exc}") from exc
        if sha256_bytes(data) != entry["sha256"]:
            raise ArtifactError(f"{file}: checksum mismatch: the file was modified after saving")
        return data

    def read_json(self, name: str) -> Any:
        """Parse one of the folder's JSON files, checked against the manifest."""
        return parse_json_bytes(self.read_bytes(name), str(self.path / name))


#: Most rows one envelope may hold (as many as an inference input file, see fheqnn.tabular).
MAX_ENVELOPE_ROWS = 100_000


def envelope_limits(folder: ModelFolder, *, max_rows: int = MAX_ENVELOPE_ROWS) -> dict[str, int]:
    """The most bytes an envelope of each kind can hold for this model (ciphertexts of at
    most ``max_rows`` rows).

    From the sizes the model implies: a ciphertext payload holds ``batch_size`` rows of the
    ciphertext bytes per row in ``report.json`` (with room for Concrete's framing, once per
    payload), and :data:`MAX_ENVELOPE_ROWS` rows take that many payloads, the last one padded;
    for evaluation keys, the expanded key size from the client specifications plus 1 MiB.
    Files are checked against these limits before they are read into memory. Reports written
    before batching have no ``batch_size``: one row per payload.
    """
    try:
        report = folder.read_json(REPORT_FILE)
    except ArtifactError:  # a client-only copy of the folder: generous per-row sizes
        report = {}
    report = report if isinstance(report, dict) else {}
    sizes = concrete_seam.key_sizes(
        concrete_seam.load_client_specs(folder.read_bytes(CLIENT_SPECS_FILE))
    )
    batch = report.get("batch_size", 1)
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else 1
    payloads = -(-max_rows // batch)

    def per_payload(name: str) -> int:
        value = report.get(name)
        value = value if isinstance(value, int) and value > 0 else 1 << 20
        return 4 * value * batch + 4096

    slack = 1 << 16
    return {
        "inputs": payloads * per_payload("input_ciphertext_bytes") + slack,
        "outputs": payloads * per_payload("output_ciphertext_bytes") + slack,
        "evaluation_keys": sizes.evaluation_full + (1 << 20),
    }


def open_model_folder(folder: str | Path, *, need: tuple[str, ...] = REQUIRED_FILES) -> ModelFolder:
    """Verify a compiled-model folder: manifest, versions, presence, size and checksum of files.

    Args:
        folder: the folder.
        need: the files this caller will read (a client needs only the client part).

    Raises:
        ArtifactError: naming the missing, truncated or tampered file, or the version mismatch.
    """
    path = Path(folder)
    manifest_path = path / MANIFEST
    manifest = read_versioned_json(
        path,
        MANIFEST,
        folder_what="compiled model folder",
        what="manifest",
        not_ours="not a manifest of ours",
        fmt=FORMAT_NAME,
        version=FORMAT_VERSION,
        format_where=path,
    )
    if not isinstance(manifest.get("files"), dict):
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
        isinstance(e, dict)
        and isinstance(e.get("sha256"), str)
        and isinstance(e.get("bytes"), int)
        and not isinstance(e.get("bytes"), bool)
        for e in files.values()
    ):
        raise ArtifactError(f"{manifest_path}: malformed file entries")
    if model_id_of(files) != manifest.get("model_id"):
        raise ArtifactError(f"{manifest_path}: the model id does not match the file checksums")
    for name in need:
        if name not in files:
            raise ArtifactError(f"{path}: the manifest does not list {name}")
        if not (path / name).is_file():
            raise ArtifactError(f"{path}: {name} is missing")
        if name not in (SERVER_FILE,):
            continue  # the others are checked when read, by read_bytes
        file = path / name
        size = file.stat().st_size
        if size != files[name]["bytes"]:
            raise ArtifactError(
                f"{file}: {size} bytes, the manifest says {files[name]['bytes']} "
                "(truncated or replaced)"
            )
        if sha256_file(file) != files[name]["sha256"]:
            raise ArtifactError(f"{file}: checksum mismatch: the file was modified after saving")
    folder_ = ModelFolder(path, manifest)
    for name in need:
        if name != SERVER_FILE:
            folder_.read_bytes(name)
    return folder_
