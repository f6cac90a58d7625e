"""The data-file reader: CSV as people write it, .npy checked from its header, clear errors."""

from __future__ import annotations

import ast
import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fheqnn import tabular
from fheqnn.errors import InvalidInputError
from fheqnn.tabular import (
    check_training_rows,
    inference_byte_limit,
    parse_labels,
    read_labels,
    read_matrix,
    read_table,
)
from fheqnn.tabular.table import _is_missing, _is_number

WINE = "alcohol,acidity,colour\n12.5,3.1,red\n13.0,2.2,white\n11.9,2.8,red\n"


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_bytes(text.encode())
    else:
        path.write_bytes(text)
    return path


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(InvalidInputError) as info:
        read_table(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message
    return message


# ----------------------------------------------------------------------------- shapes that work


def test_header_row_and_string_labels(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, WINE))
    np.testing.assert_array_equal(table.x, [[12.5, 3.1], [13.0, 2.2], [11.9, 2.8]])
    assert table.y is not None
    assert table.y.tolist() == ["red", "white", "red"]
    assert table.feature_names == ("alcohol", "acidity")
    assert table.target_name == "colour"


def test_no_header_and_integer_labels_stay_integers(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "1.5,2,3\n4,5.25,7\n"))
    assert table.feature_names is None and table.target_name is None
    np.testing.assert_array_equal(table.x, [[1.5, 2.0], [4.0, 5.25]])
    assert table.y is not None
    assert table.y.dtype == np.int64
    assert table.y.tolist() == [3, 7]
    assert isinstance(table.y.tolist()[0], int)


def test_float_labels_stay_floats(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a,y\n1,0.5\n2,1.5\n"))
    assert table.y is not None
    assert table.y.dtype == np.float64
    assert table.y.tolist() == [0.5, 1.5]


@pytest.mark.parametrize("target", ["c", 2, "2", -1, "-1"])
def test_target_by_name_or_index(tmp_path: Path, target: str | int) -> None:
    table = read_table(write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n"), target=target)
    np.testing.assert_array_equal(table.x, [[1, 2], [4, 5]])
    assert table.y is not None and table.y.tolist() == [3, 6]
    assert table.feature_names == ("a", "b")
    assert table.target_name == "c"


def test_a_header_name_wins_over_an_index(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a,0,b\n1,2,3\n4,5,6\n"), target="0", header=True)
    assert table.target_name == "0"
    assert table.y is not None and table.y.tolist() == [2, 5]


def test_target_in_the_middle_with_numeric_features_around(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a,kind,b\n1,x,2\n3,y,4\n"), target="kind")
    np.testing.assert_array_equal(table.x, [[1, 2], [3, 4]])
    assert table.y is not None and table.y.tolist() == ["x", "y"]
    assert table.feature_names == ("a", "b")


def test_no_target_reads_every_column_as_a_feature(tmp_path: Path) -> None:
    x = read_matrix(write(tmp_path, "a,b\n1,2\n3,4\n"))
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    assert x.dtype == np.float64


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_crlf_lf_and_byte_order_mark(tmp_path: Path, newline: str, bom: bytes) -> None:
    path = write(tmp_path, bom + WINE.replace("\n", newline).encode())
    table = read_table(path)
    assert table.feature_names == ("alcohol", "acidity")  # no BOM glued to the first name
    assert table.y is not None and table.y.tolist() == ["red", "white", "red"]


def test_quoted_fields_spaces_and_blank_lines(tmp_path: Path) -> None:
    text = 'size, "name, long"\n\n 1.5 ,"a,b"\n"2","line\nbreak"\n\n3,c\n'
    table = read_table(write(tmp_path, text))
    assert table.feature_names == ("size",)
    assert table.target_name == "name, long"
    np.testing.assert_array_equal(table.x, [[1.5], [2.0], [3.0]])
    assert table.y is not None and table.y.tolist() == ["a,b", "line\nbreak", "c"]


def test_header_forced_either_way(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,red\n1,2,white\n3,4,red\n")
    assert read_table(path, header=True).feature_names == ("a", "b")
    message = error_of(path, header=False)
    assert "line 1, column 1: 'a' is not a number" in message


def test_first_rows_stops_early(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,2\n3,4\n5,x\n")  # the bad last row is never read
    np.testing.assert_array_equal(read_matrix(path, first_rows=2), [[1, 2], [3, 4]])


def test_labels_files(tmp_path: Path) -> None:
    assert read_labels(write(tmp_path, "red\nwhite\nred\n")).tolist() == ["red", "white", "red"]
    assert read_labels(write(tmp_path, "label\nred\nwhite\n")).tolist() == ["red", "white"]
    assert read_labels(write(tmp_path, "y\n3\n1\n")).tolist() == [3, 1]
    assert read_labels(write(tmp_path, "red\n")).tolist() == ["red"]
    np.save(tmp_path / "y.npy", np.array([[1], [0], [1]]))
    assert read_labels(tmp_path / "y.npy").tolist() == [1, 0, 1]
    np.save(tmp_path / "s.npy", np.array(["red", "white"]))
    assert read_labels(tmp_path / "s.npy").tolist() == ["red", "white"]


def test_parse_labels() -> None:
    assert parse_labels(["3", "-1"]).dtype == np.int64
    assert parse_labels(["3", "1.5"]).tolist() == [3.0, 1.5]
    assert parse_labels(["3", "red"]).tolist() == ["3", "red"]


# ----------------------------------------------------------------------------- CSV errors


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("a,b,y\n1,,0\n", ["line 2, column 2 ('b')", "missing value ('')"]),
        ("a,b,y\n1,2,0\n3,NA,1\n", ["line 3, column 2 ('b')", "missing value ('NA')"]),
        ("a,b,y\n1,2,0\nNaN,4,1\n", ["line 3, column 1 ('a')", "missing value ('NaN')"]),
        ("a,b,y\n1,2,\n", ["line 2, column 3 ('y') (target)", "missing value"]),
        ("1,2,0\n3,4\n", ["line 2: 2 fields, expected 3", "first row (line 1)"]),
        ("a,b,y\n1,2,0\n3,4,5,6\n", ["line 3: 4 fields, expected 3", "the header (line 1)"]),
        (
            "a,b,y\n1,2,0\n3,high,1\n",
            ["line 3, column 2 ('b'): 'high' is not a number", "target is column 3 ('y')"],
        ),
        ("a,b,y\n1,inf,0\n", ["line 2, column 2 ('b'): 'inf' is not a finite number"]),
        ("", ["is empty"]),
        ("\n\n", ["is empty"]),
        ("a,b,y\n", ["has a header row (line 1) but no data rows"]),
        ("a,b,a\n1,2,3\n", ["header names 'a' twice (columns 1 and 3)"]),
        ('a,b\n1,"2\n', ["line 2", "not a readable CSV row"]),
        ("y\n1\n2\n", ["no feature column besides the target"]),
    ],
    ids=[
        "empty-field", "NA", "NaN", "missing-target", "ragged-short", "ragged-long",
        "non-numeric", "infinite", "empty-file", "blank-lines-only", "header-only",
        "duplicate-name", "unclosed-quote", "target-only",
    ],
)  # fmt: skip
def test_csv_errors_name_the_line_and_column(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = error_of(write(tmp_path, text))
    for needle in needles:
        assert needle in message, message


def test_line_numbers_count_quoted_newlines(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'a,b,y\n1,2,"x\ny"\n3,,z\n'))
    assert "line 4, column 2 ('b')" in message


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, b"a,b,y\n1,2,red\n3,4,ros\xe9\n")
    message = error_of(path)
    assert "line 3" in message
    assert "byte 0xe9" in message and "not UTF-8" in message


def test_unknown_target_name_suggests_the_closest(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, WINE), target="color")
    assert "no column named 'color' (did you mean 'colour'?)" in message
    assert "'alcohol', 'acidity', 'colour'" in message


def test_target_name_without_header(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "1,2,3\n"), target="colour")
    assert "no header row" in message and "column index" in message


@pytest.mark.parametrize("target", [3, -4, "7"])
def test_target_index_out_of_range(tmp_path: Path, target: int | str) -> None:
    message = error_of(write(tmp_path, WINE), target=target)
    assert "out of range for 3 columns (0 to 2, or -3 to -1)" in message


def test_wrong_feature_count_hints_at_the_target_column(tmp_path: Path) -> None:
    path = write(tmp_path, WINE)
    message = error_of(path, target=None, n_features=2)
    assert "has 3 features per row, expected 2" in message
    assert "--target NAME" in message
    assert read_matrix(path, target="colour", n_features=2).shape == (3, 2)


def test_a_column_of_row_ids_is_kept_as_text_and_is_no_feature(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "id," + WINE.replace("\n1", "\n007,1")), row_ids="id")
    assert table.row_ids == ("007", "007", "007") and table.row_ids_name == "id"
    assert table.feature_names == ("alcohol", "acidity") and table.x.shape == (3, 2)
    headerless = write(tmp_path, "a1,1.5,2\nb2,2.5,3\n", "plain.csv")
    table = read_table(headerless, target=-1, row_ids=0)
    assert table.row_ids == ("a1", "b2") and table.row_ids_name is None
    np.testing.assert_array_equal(table.x, [[1.5], [2.5]])
    assert "row id column index 5 is out of range" in error_of(headerless, row_ids=5)
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    assert "no column of row identifiers" in error_of(tmp_path / "x.npy", row_ids=0)


def test_size_limits_are_checked_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n" + "1,2\n" * 100)
    message = error_of(path, target=None, max_bytes=100)
    assert f"is {path.stat().st_size} bytes, more than the 100 bytes allowed" in message
    message = error_of(path, target=None, max_rows=10)
    assert "more than 10 rows" in message


def test_a_long_line_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "1," * 40_000 + "1\n")
    message = error_of(path, target=None, n_features=3, max_bytes=10**9)
    assert "line 1: longer than" in message


def test_inference_byte_limit_fits_the_rows_it_allows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)) * 1e-300  # the longest repr of a float64
    path = write(tmp_path, "\n".join(",".join(repr(v) for v in row) for row in x) + "\n")
    assert path.stat().st_size <= inference_byte_limit(4, max_rows=50)
    np.testing.assert_array_equal(
        read_matrix(path, n_features=4, max_bytes=inference_byte_limit(4, 50)), x
    )


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    assert "does not exist" in error_of(tmp_path / "nope.csv")
    assert "unsupported file type '.txt'" in error_of(write(tmp_path, "1,2\n", "d.txt"))


# ----------------------------------------------------------------------------- .npy


def test_npy_with_target_column_keeps_integer_labels(tmp_path: Path) -> None:
    data = np.array([[1, 2, 0], [3, 4, 1]])
    np.save(tmp_path / "d.npy", data)
    table = read_table(tmp_path / "d.npy")
    np.testing.assert_array_equal(table.x, [[1.0, 2.0], [3.0, 4.0]])
    assert table.x.dtype == np.float64
    assert table.y is not None and table.y.tolist() == [0, 1]


def test_npy_first_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(
        read_matrix(tmp_path / "d.npy", first_rows=2), [[0, 1, 2], [3, 4, 5]]
    )


@pytest.mark.parametrize(
    ("array", "kwargs", "needles"),
    [
        (np.arange(5.0), {}, ["shape (5,)", "2-D", "--labels"]),
        (np.zeros((0, 3)), {}, ["no rows"]),
        (np.array([["a", "b"]]), {}, ["dtype <U1", "expected numbers"]),
        (np.array([[1.0, np.nan]]), {"target": None}, ["contains NaN (rows [0]", "column index 1"]),
        (np.zeros((11, 3)), {"max_rows": 10}, ["more than 10 rows (11)"]),
        (np.zeros((4, 3)), {"target": None, "n_features": 4}, ["3 features", "expected 4"]),
        (np.zeros((4, 3)), {"target": "colour"}, ["no column names"]),
    ],
    ids=["1-D", "no-rows", "strings", "nan", "too-many-rows", "feature-count", "target-name"],
)
def test_npy_errors(tmp_path: Path, array: np.ndarray, kwargs: dict, needles: list[str]) -> None:
    np.save(tmp_path / "d.npy", array)
    message = error_of(tmp_path / "d.npy", **kwargs)
    for needle in needles:
        assert needle in message, message


def test_npy_header_is_checked_before_any_data_is_loaded(tmp_path: Path) -> None:
    # A header announcing 10^12 rows over no data: refused from the header alone.
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12, 4)}
    np.lib.format.write_array_header_1_0(buffer, header)
    path = write(tmp_path, buffer.getvalue(), "big.npy")
    assert "truncated or corrupted" in error_of(path)
    path = write(tmp_path, b"not a numpy file at all", "bad.npy")
    assert "not a readable .npy file" in error_of(path)


def test_npy_with_pickled_objects_is_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    assert "Python objects" in error_of(tmp_path / "o.npy")


def test_labels_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "y2.npy", np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match=r"shape \(3, 2\); expected one label per row"):
        read_labels(tmp_path / "y2.npy")
    with pytest.raises(InvalidInputError, match="line 1: 2 columns; expected one label per line"):
        read_labels(write(tmp_path, "1,2\n"))
    with pytest.raises(InvalidInputError, match=r"line 4, column 1 .*missing value"):
        read_labels(write(tmp_path, "red\nwhite\nred\nNA\n"))


# ----------------------------------------------------------------------------- training rows


@pytest.mark.parametrize(
    ("y", "task", "needle"),
    [
        (["red"] * 6, "classifier", "the single class 'red' in all 6 rows"),
        ([1], "classifier", "the single class 1 in its only row"),
        ([0, 0, 1, 1, 2], "classifier", "class 2 has a single row"),
        (list(range(30)) * 2 + [99], "classifier", "for a regressor, give --task regressor"),
        ([0, 0, 1, 1, 2, 2], "classifier", "6 data rows for 3 classes"),
        (["a", "b", "c", "d", "e"], "regressor", "a regressor needs numbers"),
        ([1.0, 2.0, 3.0, 4.0], "regressor", "4 data rows; a regressor needs at least 5"),
    ],
)
def test_training_rows_checks(y: list, task: str, needle: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        check_training_rows(parse_labels([str(v) for v in y]), task, source="wine.csv")
    assert needle in str(info.value)
    assert "wine.csv" in str(info.value)


def test_training_rows_accepts_enough_rows() -> None:
    check_training_rows(np.array(["r", "w"] * 4), "classifier")
    check_training_rows(np.arange(5.0), "regressor")


# ----------------------------------------------------------------------------- boundaries


def test_imports_only_numpy_and_the_standard_library() -> None:
    roots = set()
    for module in Path(tabular.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level != 1:
                # Level 1 is the package's own modules, each checked here; level 2 is fheqnn
                # (``..errors``), spelled as when tabular was one module (``.errors``).
                level = max(node.level - 1, 0)
                roots.add("." * level + (node.module or "").split(".")[0])
    assert roots <= {
        "__future__", "codecs", "csv", "difflib", "logging", "math", "os", "array",
        "collections", "dataclasses", "pathlib", "numpy", ".errors", "shlex",
    }, roots  # fmt: skip


# ----------------------------------------------------------------------------- property


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_ ", min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and not _is_number(s) and not _is_missing(s)
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], np.ndarray, list[str]]:
    n_features = draw(st.integers(1, 4))
    n_rows = draw(st.integers(1, 6))
    names = draw(st.lists(_names, min_size=n_features + 1, max_size=n_features + 1, unique=True))
    floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
    x = np.array(
        draw(st.lists(st.lists(floats, min_size=n_features, max_size=n_features),
                      min_size=n_rows, max_size=n_rows)),
        dtype=np.float64,
    )  # fmt: skip
    labels = draw(st.lists(st.sampled_from(["red", "white", "rosé", "a,b", 'say "hi"']),
                           min_size=n_rows, max_size=n_rows))  # fmt: skip
    return names, x, labels


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=tables(), newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_written_tables_read_back_equal(
    tmp_path: Path, table: tuple[list[str], np.ndarray, list[str]], newline: str, bom: bool
) -> None:
    names, x, labels = table
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(names)
    for row, label in zip(x, labels, strict=True):
        writer.writerow([repr(float(v)) for v in row] + [label])
    data = ("\ufeff" if bom else "") + buffer.getvalue()
    path = write(tmp_path, data.encode("utf-8"), "t.csv")
    got = read_table(path, target=names[-1])
    assert got.feature_names == tuple(names[:-1])
    assert got.target_name == names[-1]
    np.testing.assert_array_equal(got.x, x)
    assert got.y is not None and got.y.tolist() == labels
    assert all(math.isfinite(v) for v in got.x.ravel())


def test_npy_rows_of_images_are_read_flat_and_need_their_labels_apart(tmp_path: Path) -> None:
    images = np.arange(3 * 2 * 4 * 4, dtype=np.float32).reshape(3, 2, 4, 4)
    np.save(tmp_path / "images.npy", images)
    x = read_matrix(tmp_path / "images.npy", n_features=32)
    np.testing.assert_array_equal(x, images.reshape(3, -1))
    np.testing.assert_array_equal(read_matrix(tmp_path / "images.npy", first_rows=2), x[:2])
    with pytest.raises(InvalidInputError, match="rows of images hold no target column"):
        read_matrix(tmp_path / "images.npy", target=0)
    with pytest.raises(InvalidInputError, match="expected 31"):
        read_matrix(tmp_path / "images.npy", n_features=31)
