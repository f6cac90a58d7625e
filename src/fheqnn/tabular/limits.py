"""How much of a data file is read: the size limits, and the checks made before data is read."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError

#: Largest training (or calibration) data file read, in bytes (2 GiB).
MAX_TRAINING_BYTES = 2 * 1024**3
#: Most rows an inference input file (``encrypt`` / ``predict``) may hold.
MAX_INFERENCE_ROWS = 100_000
#: Bytes one CSV value may take in an inference file, separator included: the 17 significant
#: digits of a float64 with sign, point and exponent (24 characters) and some room for spaces.
CSV_BYTES_PER_VALUE = 32
#: Bytes allowed on top of the values of an inference CSV file (header row, blank lines).
CSV_EXTRA_BYTES = 64 * 1024


def inference_byte_limit(n_features: int, max_rows: int = MAX_INFERENCE_ROWS) -> int:
    """Largest inference CSV file (bytes) that can hold ``max_rows`` rows of ``n_features``.

    One extra column per row is allowed, for a target column that is dropped on reading.
    """
    return CSV_EXTRA_BYTES + max_rows * (n_features + 1) * CSV_BYTES_PER_VALUE


def _check_file(path: Path, what: str, max_bytes: int | None) -> None:
    if not path.is_file():
        raise InvalidInputError(f"{what} file {str(path)!r} does not exist")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidInputError(
            f"{what} file {path} is {size} bytes, more than the {max_bytes} bytes allowed; "
            "split it into smaller files"
        )


def _check_row_count(path: Path, n_rows: int, max_rows: int | None, what: str) -> None:
    if max_rows is not None and n_rows > max_rows:
        raise InvalidInputError(
            f"{what} file {path} has more than {max_rows} rows ({n_rows}); at most {max_rows} "
            "are read at once: split the file (or read the first rows only)"
        )
