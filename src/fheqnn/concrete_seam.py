"""The one place that imports Concrete: loading it quietly, and saving or loading its parts.

The compiler, the runtime and the benchmarks reach ``concrete.fhe`` only through here, so that
its import noise is silenced once, and the bytes that cross a process boundary (the server
program, the client specifications) are produced and read in one way.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .interrupts import call_interruptibly

logger = logging.getLogger(__name__)


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
    keep_exit_status()
    restore_python_sigint()
    return module


def keep_exit_status() -> None:
    """Keep the process's exit status after Concrete has simulated or run a circuit.

    Importing ``concrete.compiler`` (concrete-python 2.11) registers an ``atexit`` handler that
    stops Concrete's dataflow runtime. Once a circuit has been simulated or run, that handler
    ends the process with C's ``exit(0)``: whatever status the program meant (``sys.exit(3)``,
    an uncaught exception, pytest's count of failures) becomes 0, and the Python ``atexit``
    handlers registered before Concrete's never run. fheqnn never starts the dataflow runtime
    (it compiles without ``dataflow_parallelize`` or ``auto_parallelize``), so the handler has
    nothing to stop and is taken out. Should anything in the process start that runtime later
    through ``concrete.compiler.init_dfr`` (which Concrete calls when it compiles a circuit that
    asks for it), Concrete's handler is put back at that moment, so that the runtime is stopped
    at exit; the exit status is then Concrete's again. Not covered: a runtime started before
    this is first called, or by a loaded circuit compiled for it (``fhe.Server.load`` does not
    call ``init_dfr``); fheqnn itself does neither.

    Safe to call any number of times, from any thread; it imports ``concrete.compiler``.
    """
    with _exit_status_lock:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            import concrete.compiler as compiler

        terminate = compiler._terminate_df_parallelization
        start = compiler.init_dfr
        if getattr(start, "_fheqnn_restores_exit_handler", False):
            return  # done before; the handler is out unless the runtime was started since
        atexit.unregister(terminate)

        def init_dfr() -> None:
            start()
            atexit.unregister(terminate)  # once, however often the runtime is started
            atexit.register(terminate)

        init_dfr.__doc__ = start.__doc__
        init_dfr._fheqnn_restores_exit_handler = True  # type: ignore[attr-defined]
        compiler.init_dfr = init_dfr


_exit_status_lock = threading.Lock()


def restore_python_sigint() -> None:
    """Give SIGINT back to Python after Concrete's native library took it.

    Loading Concrete's bindings (concrete-python 2.11) installs a native SIGINT handler in
    place of Python's, and the process then dies at Ctrl-C without running any cleanup (the
    interrupted key generation or write leaves its temporaries). Python's own handler raises
    ``KeyboardInterrupt`` instead, which our callers turn into a clean exit. Only the main
    thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
        signal.signal(signal.SIGINT, handler)  # re-installs it at the C level too


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


_capture_lock = threading.Lock()


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):  # no libc symbols on this platform
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[None]:
    """Send what native code writes on file descriptor 2 to the log (first 2000 characters).

    Concrete's deserializers print a native stack trace per nested reader on a truncated key
    (megabytes of it) before raising; the exception says what matters. Process-wide, so calls
    are serialized by a lock.

    Args:
        what: names the call in the log.
    """
    with _capture_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                _flush_c_stdio()
                os.dup2(saved, 2)
                os.close(saved)
                size = sink.seek(0, os.SEEK_END)
                if size:
                    sink.seek(0)
                    text = sink.read(2000).decode(errors="replace").strip()
                    logger.debug("%s wrote %d bytes on stderr: %s", what, size, text)


def deserialize_keys(data: bytes) -> Any:
    """``fhe.Keys`` from bytes (the whole key set, or the secret keys alone:
    :func:`client_keyset_bytes`), native noise sent to the log."""
    # The capture is entered in the caller's thread, so that an interrupt that leaves the
    # native call running restores stderr before the interrupt is reported.
    with native_stderr_to_log("secret key deserialization"):
        return call_interruptibly(fhe().Keys.deserialize, data)


def client_keyset_bytes(keyset: bytes, specs: Any) -> bytes:
    """The secret keys of a serialized Concrete key set, alone: a key set with no evaluation key.

    ``fhe.Keys.serialize`` writes the whole key set, evaluation keys included (50-700 MB),
    though encryption and decryption need only the LWE secret keys (tens of KB). Concrete 2.11
    has no serializer for its ``ClientKeyset``, but a ``Keyset`` built from a program
    description with no bootstrap or key-switching key, given the secret keys as its initial
    keys, generates nothing else and serializes to the secret keys and their parameters;
    ``fhe.Keys.deserialize`` reads it back, and a ``fhe.Client`` encrypts and decrypts with it
    as with the whole set (no new key generation: the secret keys are the same).

    Args:
        keyset: ``fhe.Keys.serialize()`` of the whole key set.
        specs: the circuit's ``fhe.ClientSpecs``.

    Raises:
        RuntimeError: the key set does not hold the secret keys the specifications describe.
    """
    import json

    from concrete.compiler import Keyset, ProgramInfo

    with native_stderr_to_log("secret key extraction"):
        secret_keys = Keyset.deserialize(keyset).get_client_keys().get_secret_keys()
        description = json.loads(bytes(specs.program_info.serialize()))
        wanted = description["keyset"]["lweSecretKeys"]
        dimensions = [int(key.param.dimension()) for key in secret_keys]
        if dimensions != [int(k["params"]["lweDimension"]) for k in wanted]:
            raise RuntimeError(
                f"the key set's secret keys (dimensions {dimensions}) are not the ones the "
                "client specifications describe"
            )
        for name in description["keyset"]:
            if name != "lweSecretKeys":
                description["keyset"][name] = []  # no evaluation key of any kind
        client_only = ProgramInfo.deserialize(json.dumps(description).encode())
        initial = {int(k["id"]): key for k, key in zip(wanted, secret_keys, strict=True)}
        return bytes(Keyset(client_only, None, 0, 0, 0, 0, initial).serialize())


def deserialize_evaluation_keys(data: bytes) -> Any:
    """``fhe.EvaluationKeys`` from bytes, native noise sent to the log."""
    with native_stderr_to_log("evaluation key deserialization"):
        return call_interruptibly(fhe().EvaluationKeys.deserialize, data)


@dataclass(frozen=True)
class KeySizes:
    """Sizes of a circuit's keys (bytes), from its client specifications.

    Attributes:
        secret: the LWE secret keys (8 bytes per coefficient).
        evaluation: bootstrap and key-switching keys as serialized (seeded when compressed:
            one body per ciphertext instead of the whole mask).
        evaluation_full: the same keys expanded, as the server holds them in memory
            (standard domain; Concrete's ``size_of_bootstrap_keys`` counts the Fourier domain,
            twice this for the bootstrap keys).
        compressed: whether the evaluation keys are serialized compressed.
    """

    secret: int
    evaluation: int
    evaluation_full: int
    compressed: bool


#: Cap'n Proto's first segment (words) and its largest ``Data`` (bytes), which Concrete fills
#: with whole 64-bit words (``vectorToProtoPayload``: longer payloads are split).
_CAPNP_FIRST_SEGMENT_WORDS = 1024
_CAPNP_MAX_DATA_WORDS = ((1 << 29) - 1) // 8
#: Words of the fixed structures of a serialized evaluation key set (concrete-protocol's
#: ``ServerKeyset``): the root pointer, the root (3 list pointers) and a tag word per list;
#: per bootstrap key the list element (2), ``LweBootstrapKeyInfo`` (3), its parameters (6),
#: ``Modulus`` (2) and ``Payload`` (1), then its list of one pointer per ``Data``; per
#: key-switching key the same with parameters of 5 words.
_KEYSET_WORDS = 7
_BOOTSTRAP_KEY_WORDS = 2 + 3 + 6 + 2 + 1
_KEYSWITCH_KEY_WORDS = 2 + 3 + 5 + 2 + 1
#: A seeded (compressed) key's payload starts with its 128-bit seed.
_SEED_WORDS = 2


def serialized_evaluation_keys_bytes(specs: Any) -> int | None:
    """The exact size of ``EvaluationKeys.serialize()`` for a circuit's ``fhe.ClientSpecs``,
    with compressed (seeded) evaluation keys as fheqnn compiles them; ``None`` for a key set
    this layout does not cover (packing key-switching keys, or more keys than fit in Cap'n
    Proto's first segment), for which only :func:`key_sizes` bounds apply.

    The message is Cap'n Proto's: a segment table (4 bytes per segment and 4, padded to 8
    bytes), the first segment holding every structure, then each payload ``Data`` (the key's
    seed and its seeded ciphertext bodies, split at Cap'n Proto's largest ``Data``) with a
    one-word landing pad, placed as Cap'n Proto's builder places them: in the last segment
    while it has room, else in a new segment of at least the size of all segments so far.
    """
    info = specs.program_info.get_keyset_info()
    if info.packing_keyswitch_keys():
        return None
    secret_dims = [int(k.dimension()) for k in info.secret_keys()]
    payloads: list[int] = []
    for b in info.bootstrap_keys():
        cts = int(b.input_lwe_dimension()) * int(b.level()) * (int(b.glwe_dimension()) + 1)
        payloads.append(_SEED_WORDS + cts * int(b.polynomial_size()))
    n_bootstrap = len(payloads)
    for k in info.keyswitch_keys():
        payloads.append(_SEED_WORDS + secret_dims[int(k.input_secret_key_id())] * int(k.level()))
    chunks = [
        [
            min(_CAPNP_MAX_DATA_WORDS, words - start)
            for start in range(0, words, _CAPNP_MAX_DATA_WORDS)
        ]
        for words in payloads
    ]
    first = _KEYSET_WORDS + sum(
        (_BOOTSTRAP_KEY_WORDS if i < n_bootstrap else _KEYSWITCH_KEY_WORDS) + len(c)
        for i, c in enumerate(chunks)
    )
    if first > _CAPNP_FIRST_SEGMENT_WORDS or any(
        w + 1 <= _CAPNP_FIRST_SEGMENT_WORDS - first for c in chunks for w in c
    ):
        return None  # a payload small enough to land in the first segment: not modelled
    used = [first]  # words used per segment
    room = 0  # words left in the last segment
    next_size = 2 * _CAPNP_FIRST_SEGMENT_WORDS  # MallocMessageBuilder, GROW_HEURISTICALLY
    for words in (w + 1 for c in chunks for w in c):  # each Data with its landing pad
        if len(used) > 1 and words <= room:
            used[-1] += words
            room -= words
            continue
        size = max(words, next_size)
        next_size += size
        used.append(words)
        room = size - words
    table = 4 * (len(used) + 1)
    return table + table % 8 + 8 * sum(used)


def key_sizes(specs: Any, *, compressed: bool = True) -> KeySizes:
    """Expected key sizes of a circuit from its ``fhe.ClientSpecs`` (see :class:`KeySizes`).

    A bootstrap key holds ``input_lwe_dimension x level x (glwe_dimension + 1)`` GLWE
    ciphertexts of ``(glwe_dimension + 1) x polynomial_size`` 64-bit words (one polynomial
    when seeded); a key-switching key ``input dimension x level`` LWE ciphertexts of
    ``output dimension + 1`` words (one when seeded).
    """
    info = specs.program_info.get_keyset_info()
    secret_dims = [int(k.dimension()) for k in info.secret_keys()]
    word = 8
    seeded = full = 0
    for b in info.bootstrap_keys():
        cts = int(b.input_lwe_dimension()) * int(b.level()) * (int(b.glwe_dimension()) + 1)
        seeded += cts * int(b.polynomial_size()) * word
        full += cts * (int(b.glwe_dimension()) + 1) * int(b.polynomial_size()) * word
    for k in info.keyswitch_keys():
        n_in = secret_dims[int(k.input_secret_key_id())]
        n_out = secret_dims[int(k.output_secret_key_id())]
        seeded += n_in * int(k.level()) * word
        full += n_in * int(k.level()) * (n_out + 1) * word
    return KeySizes(
        secret=sum(secret_dims) * word,
        evaluation=seeded if compressed else full,
        evaluation_full=full,
        compressed=compressed,
    )
