"""Shared test helpers."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from fheqnn import NeuralNetClassifier


def blobs(seed: int, n_rows: int, n_features: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes (centers drawn with scale 2) and their labels 0-2."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(3, n_features))
    y = rng.integers(0, 3, size=n_rows)
    return centers[y] + rng.normal(scale=noise, size=(n_rows, n_features)), y


def tiny_classifier(x: np.ndarray, y: np.ndarray, *, max_epochs: int) -> NeuralNetClassifier:
    """A tiny, low-precision trained network: cheap keys and lookups for encrypted tests
    (2 layers, width = features, 2-bit weights and activations, 5-bit accumulators)."""
    return NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=1,
        module__n_w_bits=2,
        module__n_a_bits=2,
        module__n_accum_bits=5,
        max_epochs=max_epochs,
        verbose=0,
        random_state=0,
    ).fit(x, y)


#: SHA-256 of a file's content, by everything that identifies one version of it. Any write
#: or metadata change sets the change time (ctime), which no program can set back; a version
#: is only remembered once its ctime is a second old, since the clock behind ctime moves in
#: steps of a few milliseconds. The workspace holds ~300 MB of keys: hashing it before and
#: after each of the ~140 cases took 60 of the suite's seconds.
_content_digests: dict[tuple[str, int, int, int, int, int], bytes] = {}


def _content_digest(path: Path, st_: os.stat_result) -> bytes:
    version = (str(path), st_.st_dev, st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns)
    known = _content_digests.get(version)
    if known is not None:
        return known
    digest = hashlib.sha256(path.read_bytes()).digest()
    if time.time_ns() - st_.st_ctime_ns > 1_000_000_000:
        _content_digests[version] = digest
    return digest


def checksum(root: Path) -> str:
    """SHA-256 over every path below ``root``: kind, mode, and content (size and mtime for
    files over 64 MB, e.g. the sparse oversized input)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        digest.update(f"{path.relative_to(root)}|{st_.st_mode:o}|".encode())
        if path.is_file() and not path.is_symlink():
            if st_.st_size > 64 << 20:
                digest.update(f"{st_.st_size}|{st_.st_mtime_ns}".encode())
            else:
                digest.update(_content_digest(path, st_))
    return digest.hexdigest()
