"""What every command shares: exit codes, the usage error, printing a step, reading and writing
files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_ACCUMULATOR = 0, 1, 2, 3


#: Ctrl-C (128 + SIGINT), and a closed output pipe (128 + SIGPIPE), as shells report them.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class CliError(Exception):
    """A usage problem found by the CLI itself (exit code 2)."""


def _say(message: str) -> None:
    print(message, flush=True)


def _rows(n: int) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} row" if n == 1 else f"{n} rows"


class _Step:
    """Prints a long step's start and, at the end, how long it took."""

    def __init__(self, title: str) -> None:
        self.title = title

    #: Whether a step's line is waiting for its end (an interrupt ends it).
    open = False

    def __enter__(self) -> _Step:
        _Step.open = True  # before the line: a stop as soon as it shows must end it
        print(f"{self.title} ...", end="", flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        _Step.open = False
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            _Step.open = True  # _interrupted() ends the line
            return
        print(f" {'done' if exc_type is None else 'failed'} ({self.seconds:.1f} s)", flush=True)


def _save_array(path: Path, array: np.ndarray) -> None:
    import io

    from ..fileio import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _write_bytes(path: str | Path, data: bytes) -> None:
    from ..fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _read_envelope(path: str | Path, what: str, max_bytes: int) -> bytes:
    from ..runtime.envelope import read_envelope_file

    return read_envelope_file(path, max_bytes=max_bytes, what=what)


def rows_per_part(
    batch_size: int, requested: int | None, *, default: int, option: str, part: str
) -> int:
    """Rows per ``part`` (a request, a chunk) for a model of ``batch_size`` rows per circuit
    call: ``default`` when none is requested; a requested count that is not a multiple of the
    batch size is kept, with a note on what the padding costs (a part-filled call is padded:
    paid for, then dropped)."""
    if requested is None:
        return default
    if requested < 1:
        raise CliError(f"{option} must be >= 1, got {requested}")
    if requested % batch_size:
        padded = batch_size * -(-requested // batch_size)
        _say(
            f"note: this model runs {batch_size} rows per circuit call; {option} "
            f"{requested} pads every {part} to {padded} rows (a multiple of {batch_size} "
            "wastes nothing)"
        )
    return requested
