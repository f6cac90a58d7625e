"""Atomic writes, and the cleaning of what killed writers left behind.

Every temporary file or folder we create next to a destination is named
``.<name>.tmp-<pid>-<random>`` (being written) or ``.<name>.old-<pid>-<ns>`` (a folder being
replaced), so that the next write to the same place can tell which ones belong to a writer that
no longer runs and remove them, without touching those of a writer that is still at work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

#: Temporary names of writers that predate the pid-tagged names (``mkdtemp``/``mkstemp``
#: suffixes): removed only when older than this (s), as their writer cannot be asked.
LEGACY_STALE_SECONDS = 3600.0


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files and folders for destination ``name``."""
    return f".{name}.tmp-{os.getpid()}-"


def old_name(name: str) -> str:
    """Name under which this process moves a folder aside while replacing it."""
    return f".{name}.old-{os.getpid()}-{time.time_ns()}"


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove the temporaries that killed writers of ``target`` left next to it.

    Only names of our own pattern, owned by this user, whose writer process is gone (or, for
    the untagged names of older versions, that are older than :data:`LEGACY_STALE_SECONDS`).
    A folder moved aside (``.old-``) by a writer killed before it put the new one in place is
    renamed back to ``target`` instead of being deleted, so that it is not lost.

    Returns:
        The paths removed or restored.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    name = re.escape(target.name)
    tagged = re.compile(rf"^\.{name}\.(tmp|old)-(\d+)-[A-Za-z0-9_]+(\.tmp)?$")
    legacy = re.compile(rf"^\.{name}\.[A-Za-z0-9_]{{8}}(\.tmp)?$")
    done: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for entry in sorted(entries):
        match = tagged.match(entry.name)
        try:
            stat = entry.lstat()
        except OSError:
            continue
        if stat.st_uid != os.getuid() or entry.is_symlink():
            continue
        if match:
            if _pid_running(int(match.group(2))):
                continue
            if match.group(1) == "old" and entry.is_dir() and not target.exists():
                try:
                    os.rename(entry, target)
                except OSError:
                    continue
                logger.warning("restored %s from %s (a replacement was interrupted)", target, entry)
                done.append(entry)
                continue
        elif not (legacy.match(entry.name) and time.time() - stat.st_mtime > LEGACY_STALE_SECONDS):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", entry)
        done.append(entry)
    return done


@contextlib.contextmanager
def _atomic_file(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A file to write that becomes ``path`` (temporary file in the same folder, flushed to
    disk, renamed) when the block ends without error; removed otherwise."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: destination; its parent folder must exist.
        data: the bytes to write.
        mode: permission bits for the new file (e.g. ``0o600`` for a secret key).
    """
    with _atomic_file(path, mode) as handle:
        handle.write(data)


def atomic_copy(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` (in chunks) through a temporary file and a rename,
    as :func:`atomic_write_bytes`."""
    with _atomic_file(path) as handle, Path(source).open("rb") as src:
        shutil.copyfileobj(src, handle, 1 << 20)
