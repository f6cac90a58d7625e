"""Reading users' data files (.csv and .npy) into feature matrices and label vectors.

CSV files are read the way people write them: an optional header row (detected, or forced with
``header=``), a target column chosen by header name or index, string or numeric labels kept as they
were in the file (``"red"`` stays ``"red"``, ``3`` stays the integer 3), CRLF or LF line ends,
quoted fields, UTF-8 with or without a byte-order mark. Every problem is an
:class:`~fheqnn.errors.InvalidInputError` naming the file, the line (1-based, as in an editor)
and the column (its header name when there is one).

Sizes are checked before data is read: a file larger than the allowed number of bytes, a .npy
header announcing too many rows, or a CSV line longer than a row can be is refused before it
reaches memory. Deployed clients read their input files through this package, so it imports
only numpy and the standard library.

One module per job: the entry points (``reader``: :func:`read_table`, :func:`read_matrix`,
:func:`read_labels`), the two formats (``csv_reader``, ``npy_reader``), the size limits and the
checks made before data is read (``limits``), the :class:`Table` and the choice of its columns
(``table``), and labels (``labels``: :func:`parse_labels`, :func:`check_training_rows`).
"""

from .labels import check_training_rows, parse_labels
from .limits import (
    CSV_BYTES_PER_VALUE,
    CSV_EXTRA_BYTES,
    MAX_INFERENCE_ROWS,
    MAX_TRAINING_BYTES,
    inference_byte_limit,
)
from .reader import read_labels, read_matrix, read_table
from .table import MISSING_VALUES, Table

__all__ = [
    "CSV_BYTES_PER_VALUE",
    "CSV_EXTRA_BYTES",
    "MAX_INFERENCE_ROWS",
    "MAX_TRAINING_BYTES",
    "MISSING_VALUES",
    "Table",
    "check_training_rows",
    "inference_byte_limit",
    "parse_labels",
    "read_labels",
    "read_matrix",
    "read_table",
]
