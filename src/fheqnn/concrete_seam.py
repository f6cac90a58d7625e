"""The one place that imports Concrete: loading it quietly, and saving or loading its parts.

The compiler, the runtime and the benchmarks reach ``concrete.fhe`` only through here, so that
its import noise is silenced once, and the bytes that cross a process boundary (the server
program, the client specifications) are produced and read in one way.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@functools.cache
def fhe() -> Any:
    """The ``concrete.fhe`` module, imported once with its import-time warnings silenced.

    concrete-python 2.11 declares its namespace package with ``pkg_resources``, which warns on
    import; that warning says nothing about our use.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from concrete import fhe as module
    return module


@contextlib.contextmanager
def quiet_io() -> Iterator[None]:
    """Silence the jsonpickle deprecation that Concrete's server save/load emits (harmless)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "keys will default to True", DeprecationWarning)
        yield


def server_bytes(circuit: Any) -> bytes:
    """The server part of a compiled circuit, serialized (portable: compiled via MLIR)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "server.zip"
        with quiet_io():
            circuit.server.save(path, via_mlir=True)
        return path.read_bytes()


def client_specs_bytes(circuit: Any) -> bytes:
    """The client specifications of a compiled circuit (key and encoding parameters)."""
    return bytes(circuit.server.client_specs.serialize())


def load_server(path: str | Path) -> Any:
    """A ``fhe.Server`` from a file written from :func:`server_bytes`."""
    with quiet_io():
        return fhe().Server.load(Path(path))


def load_client_specs(data: bytes) -> Any:
    """``fhe.ClientSpecs`` from :func:`client_specs_bytes`."""
    return fhe().ClientSpecs.deserialize(data)
