"""Reading CSV files the way people write them: an optional header row (detected, or forced),
a target and a row-id column chosen by name or index, every feature value checked to be a finite
number, CRLF or LF line ends, quoted fields, UTF-8 with or without a byte-order mark, and no
line longer than a row can be.
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .labels import parse_labels
from .limits import CSV_BYTES_PER_VALUE, CSV_EXTRA_BYTES, _check_row_count
from .table import Table, _check_feature_count, _column, _is_missing, _is_number, _resolve_target

# The name the header-row message has always been logged under (``fheqnn -v``).
logger = logging.getLogger("fheqnn.tabular")

# Records looked at to decide whether the first row is a header.
_HEADER_LOOKAHEAD = 50


def _csv_records(
    path: Path, what: str, max_line_bytes: int | None
) -> Iterator[tuple[int, list[str]]]:
    """(first line number, stripped fields) of each non-blank CSV record."""

    def lines() -> Iterator[str]:
        with open(path, "rb") as handle:
            number = 0
            while True:
                raw = (
                    handle.readline()
                    if max_line_bytes is None
                    else handle.readline(max_line_bytes + 1)
                )
                if not raw:
                    return
                number += 1
                if max_line_bytes is not None and len(raw) > max_line_bytes:
                    raise InvalidInputError(
                        f"{what} file {path}, line {number}: longer than {max_line_bytes} bytes, "
                        "more than a row of this model's features can take"
                    )
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    # Line by line: b"\n" never occurs inside a UTF-8 sequence, so the line
                    # number of a bad byte is exact.
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInputError(
                        f"{what} file {path}, line {number}: byte 0x{raw[exc.start]:02x} at "
                        f"position {exc.start + 1} is not UTF-8 text; save the file as UTF-8"
                    ) from exc

    reader = csv.reader(lines(), strict=True, skipinitialspace=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInputError(
                f"{what} file {path}, line {reader.line_num}: not a readable CSV row: {exc}"
            ) from exc
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        yield start, [field.strip() for field in fields]


def _detect_header(first: list[str], rest: list[list[str]]) -> bool:
    """A header: non-numeric names above data that is numeric in some column, or names that
    do not occur again in their column (all-string columns, e.g. a labels file)."""
    if any(_is_missing(f) or _is_number(f) for f in first):
        return False
    if not rest:
        return True
    for j in range(len(first)):
        if any(_is_number(r[j]) for r in rest if j < len(r)):
            return True
    return all(name not in (r[j] for r in rest if j < len(r)) for j, name in enumerate(first))


@dataclass(frozen=True)
class _Columns:
    """What the columns of a CSV file are, decided from its first records."""

    names: list[str] | None  # the header's names; None without a header
    n_columns: int
    first_line: int  # the line of the first record (the header, if there is one)
    target: int | None
    row_ids: int | None
    features: list[int]


def _read_csv_table(
    path: Path,
    target: int | str | None,
    header: bool | None,
    n_features: int | None,
    max_bytes: int | None,
    max_rows: int | None,
    first_rows: int | None,
    what: str,
    model_names: Sequence[str] | None = None,
    *,
    labels_only: bool = False,
    row_ids: int | str | None = None,
) -> Table:
    max_line = None
    if n_features is not None and max_bytes is not None:
        max_line = CSV_EXTRA_BYTES + (n_features + 1) * CSV_BYTES_PER_VALUE
    records = _csv_records(path, what, max_line)
    head = _first_records(records, path, what)
    names = _header_names(head, header, labels_only, path, what)
    columns = _choose_columns(
        head[0], names, target, row_ids, n_features, model_names, labels_only, path, what
    )
    if names is not None:
        head = head[1:]

    def rows() -> Iterator[tuple[int, list[str]]]:
        yield from head
        yield from records

    return _read_rows(rows(), columns, max_rows, first_rows, path, what)


def _first_records(
    records: Iterator[tuple[int, list[str]]], path: Path, what: str
) -> list[tuple[int, list[str]]]:
    """The records looked at to decide whether there is a header (taken from ``records``)."""
    head: list[tuple[int, list[str]]] = []
    for record in records:
        head.append(record)
        if len(head) > _HEADER_LOOKAHEAD:
            break
    if not head:
        raise InvalidInputError(f"{what} file {path} is empty (no rows)")
    return head


def _header_names(
    head: list[tuple[int, list[str]]],
    header: bool | None,
    labels_only: bool,
    path: Path,
    what: str,
) -> list[str] | None:
    """The header row's names (each once), or ``None`` when the first record is data."""
    if header is None:
        # A lone word in a labels file is a label: a header above no data is no labels file.
        lone_label = labels_only and len(head) == 1
        header = not lone_label and _detect_header(head[0][1], [f for _, f in head[1:]])
    if not header:
        return None
    first_line, names = head[0]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if name in seen:
            raise InvalidInputError(
                f"{what} file {path}, line {first_line}: the header names {name!r} twice "
                f"(columns {seen[name] + 1} and {j + 1})"
            )
        seen[name] = j
    logger.info("%s: header row %s", path, names)
    return names


def _choose_columns(
    first: tuple[int, list[str]],
    names: list[str] | None,
    target: int | str | None,
    row_ids: int | str | None,
    n_features: int | None,
    model_names: Sequence[str] | None,
    labels_only: bool,
    path: Path,
    what: str,
) -> _Columns:
    """The target, row-id and feature columns, checked against what the caller expects."""
    first_line, first_fields = first
    n_columns = len(first_fields)
    if labels_only and n_columns != 1:
        raise InvalidInputError(
            f"{what} file {path}, line {first_line}: {n_columns} columns; expected one label "
            "per line"
        )
    t = _resolve_target(target, names, n_columns, path, what)
    k = _resolve_target(row_ids, names, n_columns, path, what, role="row id")
    if k is not None and k == t:
        raise InvalidInputError(
            f"{what} file {path}: {_column(k, names)} cannot be both the target and the row ids"
        )
    features = [j for j in range(n_columns) if j not in (t, k)]
    if not features and not labels_only:
        raise InvalidInputError(
            f"{what} file {path} has {n_columns} column(s) and no feature column besides the target"
        )
    _check_feature_count(
        path,
        len(features),
        n_features,
        what,
        n_columns,
        t is not None,
        file_names=None if names is None else [names[j] for j in features],
        model_names=model_names,
    )
    return _Columns(names, n_columns, first_line, t, k, features)


def _read_rows(
    rows: Iterable[tuple[int, list[str]]],
    columns: _Columns,
    max_rows: int | None,
    first_rows: int | None,
    path: Path,
    what: str,
) -> Table:
    """The data rows as a :class:`Table`, every field checked on the way."""
    names, t, k = columns.names, columns.target, columns.row_ids
    values = array("d")
    labels: list[str] = []
    ids: list[str] = []
    n_rows = 0
    for line, fields in rows:
        if len(fields) != columns.n_columns:
            like = "the header" if names is not None else "the first row"
            raise InvalidInputError(
                f"{what} file {path}, line {line}: {len(fields)} fields, expected "
                f"{columns.n_columns} like {like} (line {columns.first_line})"
            )
        _append_features(values, fields, line, columns, path, what)
        if t is not None:
            labels.append(_target_text(fields[t], line, t, names, path, what))
        if k is not None:
            ids.append(fields[k])
        n_rows += 1
        if max_rows is not None and n_rows > max_rows:
            _check_row_count(path, n_rows, max_rows, what)
        if first_rows is not None and n_rows >= first_rows:
            break
    if n_rows == 0:
        raise InvalidInputError(
            f"{what} file {path} has a header row (line {columns.first_line}) but no data rows"
        )
    return _table(columns, values, labels, ids, n_rows, path)


def _append_features(
    values: array, fields: list[str], line: int, columns: _Columns, path: Path, what: str
) -> None:
    """Append a row's feature values, each refused unless it is a finite number."""
    names, t = columns.names, columns.target
    for j in columns.features:
        text = fields[j]
        if _is_missing(text):
            raise InvalidInputError(
                f"{what} file {path}, line {line}, {_column(j, names)}: missing value "
                f"({text!r}); fill or drop the row"
            )
        try:
            value = float(text)
        except ValueError:
            raise InvalidInputError(
                f"{what} file {path}, line {line}, {_column(j, names)}: {text!r} is not a "
                "number; feature columns must be numeric"
                + (f" (the target is {_column(t, names)})" if t is not None else "")
            ) from None
        if not math.isfinite(value):
            raise InvalidInputError(
                f"{what} file {path}, line {line}, {_column(j, names)}: {text!r} is not a "
                "finite number"
            )
        values.append(value)


def _target_text(
    text: str, line: int, t: int, names: list[str] | None, path: Path, what: str
) -> str:
    """A row's target field, refused when it is a missing value."""
    if _is_missing(text):
        raise InvalidInputError(
            f"{what} file {path}, line {line}, {_column(t, names)} (target): missing "
            f"value ({text!r}); fill or drop the row"
        )
    return text


def _table(
    columns: _Columns, values: array, labels: list[str], ids: list[str], n_rows: int, path: Path
) -> Table:
    """The :class:`Table` of the rows read."""
    names, t, k, features = columns.names, columns.target, columns.row_ids, columns.features
    x = np.frombuffer(values, dtype=np.float64).reshape(n_rows, len(features)).copy()
    y = None if t is None else parse_labels(labels)
    return Table(
        x=x,
        y=y,
        feature_names=None if names is None else tuple(names[j] for j in features),
        target_name=None if names is None or t is None else names[t],
        source=str(path),
        row_ids=None if k is None else tuple(ids),
        row_ids_name=None if names is None or k is None else names[k],
    )
