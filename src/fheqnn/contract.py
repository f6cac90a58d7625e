"""The client contract: everything the client side of a compiled model does, in the clear.

Before encryption: validate float rows, standardize each feature, quantize, cut the rows into
chunks of the circuit's batch size. After decryption: drop the padding of the last chunk, remove
the clear shift the circuit added to the output accumulators, dequantize (offset, rescale,
bias, output activation), then post-process (class labels, target scaling). The compiler builds
one :class:`ClientContract` from the program it compiled; ``CompiledModel`` and
``FheModelClient`` both use it, and ``client.json`` is its :meth:`ClientContract.to_dict`.

numpy only: an encryption client loads this, never the training or ONNX code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compiler.ir import Elementwise, Program, Quantizer, accumulator_value, int64_array
from .compiler.serialize import (
    chain_from_dict,
    chain_to_dict,
    quantizer_from_dict,
    quantizer_to_dict,
)
from .errors import InvalidInputError, InvalidParameterError
from .validation import check_features, check_int

#: Version of :meth:`ClientContract.to_dict`. 1: no input standardization; 2: adds it; 3: adds
#: ``batch_size``. A contract of one row per call is still written as format 2, which fheqnn
#: versions before batching read; they refuse format 3 instead of encrypting single rows for a
#: circuit that takes several.
CLIENT_FORMAT = 3
#: Most rows one circuit call may take (the client encrypts rows in chunks of the batch size).
#: Compile time, ciphertexts per call and the lookups the optimizer places grow with it; past a
#: few dozen rows the fixed cost per call is paid off.
MAX_BATCH_SIZE = 1024
_ONE_ROW_FORMAT = 2
_READABLE_FORMATS = (1, 2, 3)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class OutputSpec:
    """Client-side post-processing of the network's float outputs.

    Attributes:
        kind: ``"raw"`` (outputs as they are), ``"classifier"`` (argmax -> ``classes``) or
            ``"regressor"`` (``outputs * y_scale + y_mean``).
    """

    kind: str = "raw"
    classes: tuple[Any, ...] | None = None
    y_mean: tuple[float, ...] | None = None
    y_scale: tuple[float, ...] | None = None
    squeeze: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("raw", "classifier", "regressor"):
            raise InvalidParameterError(
                f"unknown output kind {self.kind!r}; expected 'raw', 'classifier' or 'regressor'"
            )

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        """Post-process float network outputs (n_rows, n_outputs)."""
        if self.kind == "classifier":
            idx = outputs.argmax(axis=1)
            return idx if self.classes is None else np.asarray(self.classes)[idx]
        if self.kind == "regressor":
            values = outputs * np.asarray(self.y_scale) + np.asarray(self.y_mean)
            return values[:, 0] if self.squeeze else values
        return outputs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "classes": None if self.classes is None else list(self.classes),
            "y_mean": None if self.y_mean is None else list(self.y_mean),
            "y_scale": None if self.y_scale is None else list(self.y_scale),
            "squeeze": self.squeeze,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            kind=d["kind"],
            classes=None if d.get("classes") is None else tuple(d["classes"]),
            y_mean=None if d.get("y_mean") is None else tuple(d["y_mean"]),
            y_scale=None if d.get("y_scale") is None else tuple(d["y_scale"]),
            squeeze=bool(d.get("squeeze", False)),
        )


@dataclass(frozen=True)
class Standardizer:
    """Per-feature standardization ``(x - mean) / scale``, applied before quantization.

    Inputs are quantized with one scale per tensor, so features of very different magnitudes
    would lose all resolution but the largest's; standardizing them first costs nothing under
    encryption (it runs on the client, in the clear).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise InvalidParameterError(
                f"standardization mean and scale must be vectors of one length, got shapes "
                f"{mean.shape} and {scale.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise InvalidParameterError("standardization needs finite means and finite scales > 0")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardized rows (float64)."""
        return (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["scale"]))


#: Fewest rows outside a feature's range, in one call, for :meth:`FeatureRange.shifted` to
#: report the feature (with more than half of the rows outside it).
SHIFT_MIN_ROWS = 5
#: A value under a positive feature's least value divided by this (and below it by more than
#: a tenth of the range's width) is far outside the range too (:meth:`FeatureRange.far_below`):
#: grams given as kilograms, or a missing value written 0.
SMALLER_UNITS_RATIO = 5


@dataclass(frozen=True)
class FeatureRange:
    """Per-feature range of the rows a model was trained or calibrated on (raw units).

    A model quantizes its inputs and clips whatever lies beyond its quantization range, so a
    row far outside what it learned from still gets an answer, and nothing says that answer
    may be meaningless. :meth:`warn_outside` says so, for values more than the range's own
    width beyond it (a feature given in larger units: grams for kilograms), for values under a
    fifth of the least value of a feature positive in every row and below it by a tenth of
    its width (:meth:`far_below`: smaller units, kilograms for grams, or 0 for a missing
    value; even in a single row), and for a
    feature that most rows of one call leave (:meth:`shifted`: smaller units land just below
    the range). The first and last together caught 126 of the 156 ordered swaps of two columns
    on one wine split; swaps of overlapping ranges go unnoticed. Ordinary new rows mostly pass:
    over 20 random unstratified 75/25 splits of scikit-learn's iris, wine, diabetes, breast
    cancer and digits, checked against the whole training part, 0, 0, 0, 0.24 % (1.4 % on the
    worst split) and 0.09 % of the held-out rows were flagged as far (none of them under a
    fifth of a positive feature's least value, on 20 stratified splits), and no feature of any
    held-out part as shifted. A range taken from fewer rows flags more (breast cancer: about
    1.5 % of rows from a 50-row range). A feature constant in those rows gives no scale to
    judge by and is not checked (the network learned nothing from it).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64)
        high = np.asarray(self.high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or not len(low):
            raise InvalidParameterError(
                f"a feature range needs low and high vectors of one length, got shapes "
                f"{low.shape} and {high.shape}"
            )
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise InvalidParameterError("a feature range needs finite bounds with low <= high")

    @classmethod
    def of_rows(cls, x: np.ndarray) -> FeatureRange:
        """The range of validated rows ``(n_rows, n_features)``."""
        x = np.asarray(x, dtype=np.float64)
        return cls(tuple(x.min(axis=0).tolist()), tuple(x.max(axis=0).tolist()))

    def far_outside(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of the values of ``x`` beyond the range by more than its width."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        width = high - low
        return ((x < low - width) | (x > high + width)) & (width > 0)

    def far_below(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of the values of ``x`` under the least value divided by
        :data:`SMALLER_UNITS_RATIO`, on the features positive in every row of the range, and
        below it by more than a tenth of its width. The last condition keeps features whose
        least value lies near 0 out (a share from 0.006 to 1: a new row's 0.00007 is not
        another unit, found by the test suite)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        width = high - low
        return (low > 0) & (x < low / SMALLER_UNITS_RATIO) & (low - x > width / 10) & (width > 0)

    def outside(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of the values of ``x`` outside the range at all."""
        return (x < np.asarray(self.low)) | (x > np.asarray(self.high))

    def shifted(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of the features (columns) that most rows of ``x`` leave: at least
        :data:`SHIFT_MIN_ROWS` rows and more than half of them outside the range, where rows
        like the ones the range came from would rarely be (about 2 in n + 1 for a range taken
        from n rows)."""
        count = self.outside(x).sum(axis=0)
        width = np.asarray(self.high) - np.asarray(self.low)
        return (count >= SHIFT_MIN_ROWS) & (2 * count > len(x)) & (width > 0)

    def warn_outside(
        self, x: np.ndarray, names: Sequence[str] | None = None, seen: str = "training"
    ) -> None:
        """Warn once (:class:`~fheqnn.errors.InputRangeWarning`) when rows ``x`` hold values
        far outside the range (:meth:`far_outside`, :meth:`far_below`), or when most of them
        leave it on some feature (:meth:`shifted`); ``seen`` names the rows the range comes
        from."""
        import warnings

        from .errors import InputRangeWarning

        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.low):
            return

        def label(column: int) -> str:
            return (
                f"{names[column]!r} (the model's column {column})" if names else f"column {column}"
            )

        def span(column: int) -> str:
            return f"{self.low[column]:.6g} to {self.high[column]:.6g}"

        said = []
        far = self.far_outside(x) | self.far_below(x)
        if far.any():
            rows, columns = np.nonzero(far)
            row, column = int(rows[0]), int(columns[0])
            n_rows, others = len(np.unique(rows)), len(np.unique(columns)) - 1
            said.append(
                f"{n_rows} of {len(x)} rows {'holds' if n_rows == 1 else 'hold'} values far "
                f"outside the range of the {seen} rows (beyond it by more than its width, or "
                f"under 1/{SMALLER_UNITS_RATIO} of a positive feature's least value): row "
                f"{row}, feature {label(column)} is {x[row, column]:.6g} where the {seen} rows "
                f"span {span(column)}"
                + (f", and {others} other feature{'s' if others > 1 else ''} too" if others else "")
            )
        shifted = self.shifted(x) & ~far.any(axis=0)
        if shifted.any():
            column = int(np.nonzero(shifted)[0][0])
            outside = int(self.outside(x)[:, column].sum())
            others = int(shifted.sum()) - 1
            given = f"{x[:, column].min():.6g} to {x[:, column].max():.6g}"
            if x[:, column].min() == x[:, column].max():
                given = f"all {x[0, column]:.6g}"
            said.append(
                f"{outside} of {len(x)} rows lie outside the range of the {seen} rows on feature "
                f"{label(column)}: the {seen} rows span {span(column)}, these {given}"
                + (
                    f", and as many on {others} other feature{'s' if others > 1 else ''}"
                    if others
                    else ""
                )
                + f", where rows like the {seen} rows rarely would"
            )
        if said:
            warnings.warn(
                "; ".join(said) + ". The model clips its inputs to the range it learned, so these "
                "rows' predictions may rest on clipped values; if that is unexpected, check the "
                "columns' units and order",
                InputRangeWarning,
                stacklevel=3,
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureRange:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(float(v) for v in d["low"]), tuple(float(v) for v in d["high"]))


@contextlib.contextmanager
def range_warnings_off() -> Iterator[None]:
    """No :class:`~fheqnn.errors.InputRangeWarning` inside: for rows known to be right (a
    shipped data set's own test split, or the test split of the file a model was just trained
    on), whose rare far values are the data's, not a mistake to report."""
    import warnings

    from .errors import InputRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputRangeWarning)
        yield


def align_columns(
    x: np.ndarray,
    names: Sequence[str] | None,
    expected: Sequence[str] | None,
    what: str = "input",
) -> tuple[np.ndarray, bool]:
    """The columns of ``x`` (named ``names``, from a file's header) in the order ``expected``.

    Without names on either side, ``x`` is returned as it is (columns by position).

    Returns:
        The rows, and whether their columns were reordered.

    Raises:
        InvalidInputError: the names are not the expected ones (some missing, some unknown):
            matching by position would give wrong answers silently.
    """
    if expected is None or names is None:
        return x, False
    names, expected = tuple(str(n) for n in names), tuple(expected)
    if names == expected:
        return x, False
    missing = [n for n in expected if n not in names]
    unknown = [n for n in names if n not in expected]
    if missing or unknown or len(set(names)) != len(names):
        raise InvalidInputError(
            f"{what} columns {list(names)} are not the model's features {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not in the model {unknown}" if unknown else "")
            + ". Rename the header, or drop it to match columns by position"
        )
    order = [names.index(n) for n in expected]
    return np.asarray(x)[:, order], True


@dataclass(frozen=True, eq=False)
class ClientContract:
    """What the client does before encryption and after decryption (no weights).

    Attributes:
        n_features, n_outputs: row widths in and out.
        input_quantizer: float features (standardized) to the circuit's input integers.
        output_shift: clear constant the circuit added to the output accumulators (see
            ``Layer.shift``), removed here.
        output_offset, output_acc_scale, output_bias, output_activation: the output layer's
            dequantization, applied to the (unshifted) accumulators.
        output_spec: post-processing of the float outputs.
        standardizer: per-feature standardization before quantization (``None``: none).
        batch_size: rows per circuit call: the client encrypts rows in chunks of this many,
            the last chunk padded (see :meth:`chunks`), and drops the padding after decryption.
        feature_names: the names of the input columns, in the model's order, when training
            knew them (a CSV header); ``None`` otherwise. Clients use them to find the columns
            of a file by name (:meth:`align_columns`).
        feature_range: the per-feature range of the calibration rows (raw units), when the
            compiler recorded it; rows far outside it are warned about before quantization
            (``None``: contracts saved before it existed, no check).
        input_shape: the shape of one row for a model that takes images (rows of it are
            flattened before anything else); ``None``: flat rows only.
    """

    n_features: int
    n_outputs: int
    input_quantizer: Quantizer
    output_shift: int
    output_offset: np.ndarray
    output_acc_scale: np.ndarray
    output_bias: np.ndarray
    output_activation: Elementwise | None
    output_spec: OutputSpec
    standardizer: Standardizer | None = None
    batch_size: int = 1
    feature_names: tuple[str, ...] | None = None
    feature_range: FeatureRange | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "batch_size", check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        )
        if self.feature_names is not None:
            names = tuple(self.feature_names)
            if len(names) != self.n_features or not all(isinstance(n, str) for n in names):
                raise InvalidParameterError(
                    f"feature_names must be {self.n_features} strings, got {names!r}"
                )
            if len(set(names)) != len(names):
                raise InvalidParameterError(f"feature_names repeat a name: {names!r}")
            object.__setattr__(self, "feature_names", names)
        if self.standardizer is not None and len(self.standardizer.mean) != self.n_features:
            raise InvalidParameterError(
                f"standardization has {len(self.standardizer.mean)} features, the model "
                f"{self.n_features}"
            )
        if self.feature_range is not None and len(self.feature_range.low) != self.n_features:
            raise InvalidParameterError(
                f"the feature range has {len(self.feature_range.low)} features, the model "
                f"{self.n_features}"
            )

    @classmethod
    def from_program(
        cls,
        program: Program,
        output_spec: OutputSpec | None = None,
        standardizer: Standardizer | None = None,
    ) -> ClientContract:
        """The contract of a compiled program."""
        out = program.layers[-1]
        return cls(
            n_features=program.n_features,
            n_outputs=program.n_outputs,
            input_quantizer=program.input_quantizer,
            output_shift=out.shift,
            output_offset=out.offset,
            output_acc_scale=out.acc_scale,
            output_bias=out.bias,
            output_activation=out.activation,
            output_spec=output_spec or OutputSpec(),
            standardizer=standardizer,
            input_shape=program.input_shape,
        )

    # ------------------------------------------------------------------ before encryption
    def align_columns(
        self, x: np.ndarray, names: Sequence[str] | None, what: str = "input"
    ) -> tuple[np.ndarray, bool]:
        """The columns of ``x`` in the model's order, found by the names of a file's header
        (see :func:`align_columns`)."""
        return align_columns(x, names, self.feature_names, what)

    def check(self, x: Any, what: str = "X") -> np.ndarray:
        """Validate float rows: 2-D (or rows of ``input_shape``, flattened), numeric, finite,
        ``n_features`` wide (float64)."""
        return check_features(x, self.n_features, what=what, row_shape=self.input_shape)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """Validated rows, standardized when the model learned a standardization."""
        return x if self.standardizer is None else self.standardizer.apply(x)

    def check_and_warn(self, x: Any, what: str = "X", *, check_range: bool = True) -> np.ndarray:
        """:meth:`check` the rows, then (``check_range``) warn once
        (:class:`~fheqnn.errors.InputRangeWarning`) about rows outside the range of the
        calibration rows (see :class:`FeatureRange`). Callers that cut rows into parts call
        this on the whole, then quantize the parts with ``check_range=False``."""
        x = self.check(x, what)
        if check_range and self.feature_range is not None:
            self.feature_range.warn_outside(x, self.feature_names, seen="calibration")
        return x

    def quantize(self, x: Any, what: str = "X", *, check_range: bool = True) -> np.ndarray:
        """Validate, standardize and quantize float rows: int64 ``(n_rows, n_features)``;
        ``check_range`` as in :meth:`check_and_warn`."""
        x = self.check_and_warn(x, what, check_range=check_range)
        return self.input_quantizer.quantize(self.standardize(x))

    def chunks(self, q: np.ndarray) -> list[np.ndarray]:
        """Quantized rows cut into the circuit's input shape ``(batch_size, n_features)``.

        The last chunk is padded with copies of its last row: a valid input by construction,
        whatever the input range (zeros need not be). Its results are dropped by
        :meth:`trim`.
        """
        q = np.asarray(q, dtype=np.int64)
        size = self.batch_size
        out = []
        for start in range(0, len(q), size):
            part = q[start : start + size]
            if len(part) < size:
                part = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
            out.append(part)
        return out

    def n_chunks(self, n_rows: int) -> int:
        """Circuit calls (ciphertexts) that ``n_rows`` rows take."""
        return -(-int(n_rows) // self.batch_size)

    # ------------------------------------------------------------------ after decryption
    def trim(self, outputs: list[np.ndarray], n_rows: int) -> np.ndarray:
        """Circuit outputs of :meth:`chunks`, joined, without the padding: ``(n_rows, ...)``.

        Args:
            outputs: one array of ``batch_size`` rows per chunk.
            n_rows: the rows that were asked for.
        """
        joined = np.concatenate([np.asarray(o).reshape(self.batch_size, -1) for o in outputs])
        return joined[:n_rows]

    def unshift(self, raw: np.ndarray) -> np.ndarray:
        """Circuit outputs to the output layer's accumulators (int64)."""
        return np.asarray(raw, dtype=np.int64) - self.output_shift

    def dequantize(self, acc: np.ndarray) -> np.ndarray:
        """Output accumulators to float outputs (n_rows, n_outputs)."""
        value = accumulator_value(acc, self.output_offset, self.output_acc_scale, self.output_bias)
        return value if self.output_activation is None else self.output_activation(value)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Circuit outputs to float outputs: unshift, then dequantize."""
        return self.dequantize(self.unshift(raw))

    def postprocess(self, outputs: np.ndarray) -> np.ndarray:
        """Float outputs to predictions (labels, values or raw outputs)."""
        return self.output_spec.apply(outputs)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``client.json``).

        Format 3 with ``batch_size`` when it is not 1, else format 2 (which fheqnn versions
        before batching read too).
        """
        batched = {} if self.batch_size == 1 else {"batch_size": self.batch_size}
        # Optional: readers that predate it ignore it (columns by position, as before).
        named = {} if self.feature_names is None else {"feature_names": list(self.feature_names)}
        if self.feature_range is not None:
            named["feature_range"] = self.feature_range.to_dict()
        if self.input_shape is not None:
            named["input_shape"] = list(self.input_shape)
        return {
            "format": CLIENT_FORMAT if batched else _ONE_ROW_FORMAT,
            **batched,
            **named,
            "n_features": self.n_features,
            "n_outputs": self.n_outputs,
            "input_quantizer": quantizer_to_dict(self.input_quantizer),
            "standardization": None if self.standardizer is None else self.standardizer.to_dict(),
            "output_layer": {
                "shift": self.output_shift,
                "offset": np.asarray(self.output_offset).tolist(),
                "acc_scale": np.asarray(self.output_acc_scale).tolist(),
                "bias": np.asarray(self.output_bias).tolist(),
                "activation": chain_to_dict(self.output_activation),
            },
            "output_spec": self.output_spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> ClientContract:
        """Inverse of :meth:`to_dict`; also reads format 1 (before standardization existed).

        Formats 1 and 2 mean one row per call; format 3 must give ``batch_size``.

        Raises:
            InvalidParameterError: an unknown format version or a malformed contract.
        """
        if not isinstance(d, dict):
            raise InvalidParameterError(
                f"a client contract is a JSON object, got {type(d).__name__}"
            )
        if d.get("format") not in _READABLE_FORMATS:
            raise InvalidParameterError(
                f"client contract format {d.get('format')!r} is not one this version reads "
                f"{_READABLE_FORMATS}: the model was saved by another fheqnn version"
            )
        try:
            quantizer = quantizer_from_dict(d["input_quantizer"])
            out = d["output_layer"]
            standardization = d.get("standardization")
            if quantizer is None:
                raise ValueError("no input quantizer")
            batched = d["format"] > _ONE_ROW_FORMAT
            if not batched and "batch_size" in d:
                raise ValueError(f"batch_size in a contract of format {d['format']}")
            return cls(
                n_features=int(d["n_features"]),
                n_outputs=int(d["n_outputs"]),
                input_quantizer=quantizer,
                output_shift=int(out["shift"]),
                output_offset=int64_array(out["offset"]),
                output_acc_scale=np.asarray(out["acc_scale"], dtype=np.float64),
                output_bias=np.asarray(out["bias"], dtype=np.float64),
                output_activation=chain_from_dict(out["activation"]),
                output_spec=OutputSpec.from_dict(d["output_spec"]),
                standardizer=None
                if standardization is None
                else Standardizer.from_dict(standardization),
                batch_size=d["batch_size"] if batched else 1,
                feature_names=None if d.get("feature_names") is None else tuple(d["feature_names"]),
                feature_range=None
                if d.get("feature_range") is None
                else FeatureRange.from_dict(d["feature_range"]),
                input_shape=None if d.get("input_shape") is None else tuple(d["input_shape"]),
            )
        except InvalidParameterError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidParameterError(f"malformed client contract: {exc!r}") from exc
