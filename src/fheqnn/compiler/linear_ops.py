"""Structured integer linear maps of a layer: what the circuit computes before its lookups.

A layer of the IR accumulates ``acc = x @ W.T`` with a dense integer matrix ``W`` (its
``weight``). For a convolutional network, ``W`` is the composition of a few structured maps:
a 2-D convolution, a sum pool (an average pool whose division is folded into the lookup that
follows), a flatten, a dense product. The IR keeps both: the dense composition, which the
interpreter, the range proof and the passes use, and the sequence of structured maps
(:class:`Conv2d`, :class:`Dense`), which the back end
(:func:`fheqnn.compiler.backend.circuit_function`) emits as Concrete's own convolution and
matrix product on encrypted tensors.

Every map takes and returns rows of flat features, shape ``(n_rows, n)``: an image tensor
``(C, H, W)`` is flat in C order, as ONNX's Flatten and Reshape lay it out, so a flatten is no
map at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

#: Integers below this are exact in float64 (with a factor 2 of margin).
_FLOAT_EXACT_BOUND = 2**52


def _frozen(value: Any, dtype: Any) -> np.ndarray:
    arr = np.array(value, dtype=dtype)
    arr.setflags(write=False)
    return arr


def _refuse_empty(name: str, window: Any, in_shape: tuple[int, ...], out_shape: Any) -> None:
    """``ValueError`` when a window leaves no output position."""
    if min(out_shape) < 1:
        raise ValueError(f"{name}: a {window} window leaves no output on {in_shape[1:]} inputs")


def _windows(
    kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int], out_hw: Any
) -> Any:
    """For each kernel position ``(i, j)``: the slices of a (padded) image's rows and columns
    that this position reads at every output position."""
    (sh, sw), (dh, dw), (h_out, w_out) = strides, dilations, out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows = slice(i * dh, i * dh + sh * (h_out - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (w_out - 1) + 1, sw)
            yield i, j, rows, cols


def matrix_ranges(matrix: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an integer matrix, the interval of ``matrix @ x`` over inputs in
    ``[lo, hi]`` (exact: each weight meets its worst input)."""
    pos, neg = np.clip(matrix, 0, None), np.clip(matrix, None, 0)
    return pos.sum(axis=1) * lo + neg.sum(axis=1) * hi, pos.sum(axis=1) * hi + neg.sum(axis=1) * lo


def _out_size(size: int, kernel: int, stride: int, dilation: int, pads: int = 0) -> int:
    """Output positions along one axis of a window sliding over ``size`` (+ ``pads``) inputs."""
    return (size + pads - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = x @ weight.T`` with clear integer weights ``(n_out, n_in)``."""

    weight: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _frozen(self.weight, np.int64))
        if self.weight.ndim != 2:
            raise ValueError(f"dense weights must be 2-D, got shape {self.weight.shape}")

    @property
    def n_in(self) -> int:
        """Input features."""
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        """Output features."""
        return int(self.weight.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Exact integer product, ``(n_rows, n_in) -> (n_rows, n_out)``."""
        return np.asarray(x, dtype=np.int64) @ self.weight.T

    def matrix(self) -> np.ndarray:
        """The map as a dense integer matrix ``(n_out, n_in)``."""
        return self.weight

    def describe(self) -> str:
        """One-line text form."""
        return f"dense {self.n_in} -> {self.n_out}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {"kind": "dense", "weight": self.weight.tolist()}


@dataclass(frozen=True, eq=False)
class Conv2d:
    """A 2-D convolution of ``(C, H, W)`` inputs by clear integer kernels, as ONNX's Conv
    (cross-correlation, zero padding) without bias.

    Attributes:
        kernel: int64 ``(C_out, C_in / group, kh, kw)``.
        in_shape: ``(C_in, H, W)`` of one row.
        strides: ``(sh, sw)``.
        pads: ``(top, left, bottom, right)``, ONNX's order.
        dilations: ``(dh, dw)``.
        group: 1 (every input channel feeds every output), ``C_in`` (depthwise) or between.
        name: the ONNX node it came from, for messages.
    """

    kernel: np.ndarray
    in_shape: tuple[int, int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    name: str = "conv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _frozen(self.kernel, np.int64))
        object.__setattr__(self, "in_shape", tuple(int(d) for d in self.in_shape))
        object.__setattr__(self, "strides", tuple(int(d) for d in self.strides))
        object.__setattr__(self, "pads", tuple(int(d) for d in self.pads))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.kernel.ndim != 4 or len(self.in_shape) != 3:
            raise ValueError(
                f"{self.name}: a 2-D convolution needs a 4-D kernel and (C, H, W) inputs, got "
                f"kernel {self.kernel.shape} and input {self.in_shape}"
            )
        c_out, c_in_group = self.kernel.shape[:2]
        c_in = self.in_shape[0]
        if (
            self.group < 1
            or c_in % self.group
            or c_out % self.group
            or c_in // self.group != c_in_group
        ):
            raise ValueError(
                f"{self.name}: kernel {self.kernel.shape} does not fit {c_in} input channels "
                f"in {self.group} group(s)"
            )
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.pads) < 0:
            raise ValueError(f"{self.name}: strides and dilations >= 1, pads >= 0")
        _refuse_empty(self.name, self.kernel.shape[2:], self.in_shape, self.out_shape)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C_out, H_out, W_out)`` of one row."""
        _, h, w = self.in_shape
        kh, kw = self.kernel.shape[2:]
        top, left, bottom, right = self.pads
        h_out = _out_size(h, kh, self.strides[0], self.dilations[0], top + bottom)
        w_out = _out_size(w, kw, self.strides[1], self.dilations[1], left + right)
        return int(self.kernel.shape[0]), int(h_out), int(w_out)

    @property
    def n_in(self) -> int:
        """Input features (``C * H * W``)."""
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        """Output features (``C_out * H_out * W_out``)."""
        return int(np.prod(self.out_shape))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Exact integer convolution, ``(n_rows, n_in) -> (n_rows, n_out)``.

        One product over channels per kernel position; in float64 (BLAS) when every partial
        sum is provably an integer below 2**52, in int64 otherwise.
        """
        x = np.asarray(x, dtype=np.int64)
        n = x.shape[0]
        c_in, h, w = self.in_shape
        c_out, h_out, w_out = self.out_shape
        top, left, bottom, right = self.pads
        bound = int(np.abs(x).max(initial=0)) * int(np.abs(self.kernel).sum(axis=(1, 2, 3)).max())
        dtype = np.float64 if bound < _FLOAT_EXACT_BOUND else np.int64
        padded = np.zeros((n, c_in, h + top + bottom, w + left + right), dtype=dtype)
        padded[:, :, top : top + h, left : left + w] = x.reshape(n, c_in, h, w)
        g = self.group
        grouped = padded.reshape(n, g, c_in // g, *padded.shape[2:])
        kernel = self.kernel.astype(dtype).reshape(g, c_out // g, c_in // g, *self.kernel.shape[2:])
        out = np.zeros((n, g, c_out // g, h_out, w_out), dtype=dtype)
        window = self.kernel.shape[2:]
        for i, j, rows, cols in _windows(window, self.strides, self.dilations, (h_out, w_out)):
            patch = grouped[:, :, :, rows, cols]  # (n, g, c_in/g, h_out, w_out)
            out += np.einsum("ngchw,goc->ngohw", patch, kernel[:, :, :, i, j])
        return out.reshape(n, -1).astype(np.int64)

    def matrix(self) -> np.ndarray:
        """The map as a dense integer matrix ``(n_out, n_in)`` (computed once)."""
        return self._matrix

    @cached_property
    def _matrix(self) -> np.ndarray:
        matrix = self.apply(np.eye(self.n_in, dtype=np.int64)).T
        matrix.setflags(write=False)
        return matrix

    def keep_input_channels(self, keep: np.ndarray) -> Conv2d:
        """The same convolution reading only the input channels ``keep`` (group 1 only)."""
        if self.group != 1:
            raise ValueError(f"{self.name}: only a group-1 convolution can drop input channels")
        keep = np.asarray(keep)
        return Conv2d(
            self.kernel[:, keep],
            (int(keep.size), *self.in_shape[1:]),
            self.strides,
            self.pads,
            self.dilations,
            1,
            self.name,
        )

    def describe(self) -> str:
        """One-line text form."""
        kh, kw = self.kernel.shape[2:]
        extras = []
        if self.strides != (1, 1):
            extras.append(f"stride {self.strides}")
        if any(self.pads):
            extras.append(f"pads {self.pads}")
        if self.dilations != (1, 1):
            extras.append(f"dilation {self.dilations}")
        if self.group != 1:
            extras.append(f"group {self.group}")
        more = f" ({', '.join(extras)})" if extras else ""
        return f"conv {kh}x{kw} {self.in_shape} -> {self.out_shape}{more}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "kind": "conv2d",
            "name": self.name,
            "kernel": self.kernel.tolist(),
            "in_shape": list(self.in_shape),
            "strides": list(self.strides),
            "pads": list(self.pads),
            "dilations": list(self.dilations),
            "group": self.group,
        }


@dataclass(frozen=True, eq=False)
class MaxPool2d:
    """The maximum over each window of each channel of ``(C, H, W)`` integer rows, as ONNX's
    MaxPool without padding. Not linear: under encryption Concrete computes each maximum with
    table lookups; it commutes with dequantization (a positive scale keeps the order), so it
    runs on a layer's input integers, before the layer's linear maps.

    Attributes:
        in_shape: ``(C, H, W)`` of one row.
        kernel_shape: ``(kh, kw)``.
        strides: ``(sh, sw)``.
        dilations: ``(dh, dw)``.
        name: the ONNX node it came from, for messages.
    """

    in_shape: tuple[int, int, int]
    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    name: str = "maxpool"

    def __post_init__(self) -> None:
        for attr in ("in_shape", "kernel_shape", "strides", "dilations"):
            object.__setattr__(self, attr, tuple(int(d) for d in getattr(self, attr)))
        if len(self.in_shape) != 3 or len(self.kernel_shape) != 2:
            raise ValueError(f"{self.name}: a 2-D max pool needs (C, H, W) rows and a 2-D window")
        if min(self.kernel_shape) < 1 or min(self.strides) < 1 or min(self.dilations) < 1:
            raise ValueError(f"{self.name}: window, strides and dilations must be >= 1")
        _refuse_empty(self.name, self.kernel_shape, self.in_shape, self.out_shape)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C, H_out, W_out)`` of one row."""
        c, h, w = self.in_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.strides, self.dilations
        return c, _out_size(h, kh, sh, dh), _out_size(w, kw, sw, dw)

    @property
    def n_in(self) -> int:
        """Input values per row."""
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        """Output values per row."""
        return int(np.prod(self.out_shape))

    @property
    def lookups_per_output(self) -> int:
        """Table lookups one output costs in the circuit: Concrete 2.11's max pool takes one
        per window value (measured: 4 for 2x2, 9 for 3x3), and the back end adds one that
        widens the result for the accumulator it feeds (``fhe.identity``)."""
        return int(np.prod(self.kernel_shape)) + 1

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Exact maxima, ``(..., n_in) -> (..., n_out)``."""
        x = np.asarray(x, dtype=np.int64)
        lead = x.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        image = x.reshape(n, *self.in_shape)
        out = None
        for _, _, rows, cols in _windows(
            self.kernel_shape, self.strides, self.dilations, self.out_shape[1:]
        ):
            patch = image[:, :, rows, cols]
            out = patch if out is None else np.maximum(out, patch)
        assert out is not None
        return out.reshape(*lead, self.n_out)

    def describe(self) -> str:
        """One-line text form."""
        kh, kw = self.kernel_shape
        stride = "" if self.strides == (1, 1) else f" (stride {self.strides})"
        return f"max pool {kh}x{kw} {self.in_shape} -> {self.out_shape}{stride}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "kind": "maxpool2d",
            "name": self.name,
            "in_shape": list(self.in_shape),
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "dilations": list(self.dilations),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaxPool2d:
        """Inverse of :meth:`to_dict`."""
        if d.get("kind") != "maxpool2d":
            raise ValueError(f"not a saved max pool: {d.get('kind')!r}")
        return cls(
            tuple(d["in_shape"]),
            tuple(d["kernel_shape"]),
            tuple(d["strides"]),
            tuple(d["dilations"]),
            str(d["name"]),
        )


LinearOp = Dense | Conv2d


def sum_pool(in_shape: tuple[int, int, int], kernel_shape: tuple[int, int], **conv: Any) -> Conv2d:
    """A sum over each window of each channel: a depthwise convolution by ones (an average
    pool is this sum, its division left to the lookup that follows)."""
    channels = int(in_shape[0])
    kernel = np.ones((channels, 1, *kernel_shape), dtype=np.int64)
    return Conv2d(kernel, in_shape, group=channels, **conv)


def op_from_dict(d: dict[str, Any]) -> LinearOp:
    """Inverse of ``to_dict``."""
    if d.get("kind") == "dense":
        return Dense(np.asarray(d["weight"], dtype=np.int64))
    if d.get("kind") == "conv2d":
        return Conv2d(
            np.asarray(d["kernel"], dtype=np.int64),
            tuple(d["in_shape"]),
            tuple(d["strides"]),
            tuple(d["pads"]),
            tuple(d["dilations"]),
            int(d["group"]),
            str(d["name"]),
        )
    raise ValueError(f"unknown linear map {d.get('kind')!r} in saved program")


def compose(ops: tuple[LinearOp, ...]) -> np.ndarray:
    """The dense integer matrix of ``ops`` applied in order, ``(n_out, n_in)`` (exact int64)."""
    matrix = ops[0].matrix()
    for op in ops[1:]:
        matrix = op.matrix() @ matrix
    return matrix


@dataclass(frozen=True, eq=False)
class LinearPlan:
    """How the circuit computes a layer's accumulators: ``ops`` in order, then the outputs
    ``rows`` kept (dead ones dropped; ``None``: all).

    Attributes:
        ops: the structured maps, input to output.
        rows: indices of the last map's outputs that are the layer's neurons, in order.
    """

    ops: tuple[LinearOp, ...]
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ValueError("a linear plan needs at least one map")
        for prev, nxt in zip(self.ops, self.ops[1:], strict=False):
            if prev.n_out != nxt.n_in:
                raise ValueError(
                    f"linear maps do not chain: {prev.describe()} gives {prev.n_out} values, "
                    f"{nxt.describe()} takes {nxt.n_in}"
                )
        if self.rows is not None:
            object.__setattr__(self, "rows", _frozen(self.rows, np.int64))

    @property
    def n_in(self) -> int:
        """Inputs of the first map."""
        return self.ops[0].n_in

    @property
    def n_out(self) -> int:
        """The layer's neurons."""
        return self.ops[-1].n_out if self.rows is None else int(self.rows.size)

    @cached_property
    def full_matrix(self) -> np.ndarray:
        """The composition of every map, before ``rows``."""
        return compose(self.ops)

    def matrix(self) -> np.ndarray:
        """The dense integer matrix of the plan, ``(n_out, n_in)``."""
        full = self.full_matrix
        return full if self.rows is None else full[self.rows]

    def intermediate_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The proven range of every value the plan computes on inputs in ``[lo, hi]``: each
        map's whole output (the outputs ``rows`` later drops included), as ``(lo, hi)``.

        Concrete gives a map's inputs and output one width, so the circuit holds every one of
        these on the accumulator's width or wider."""
        ranges = []
        matrix = None
        for op in self.ops:
            matrix = op.matrix() if matrix is None else op.matrix() @ matrix
            bottom, top = matrix_ranges(matrix, lo, hi)
            ranges.append((int(bottom.min(initial=0)), int(top.max(initial=0))))
        return ranges

    def keep_rows(self, keep: np.ndarray) -> LinearPlan:
        """The plan with only the neurons ``keep`` (indices or a mask over the neurons)."""
        current = np.arange(self.ops[-1].n_out) if self.rows is None else self.rows
        return LinearPlan(self.ops, current[np.asarray(keep)])

    def droppable_inputs(self, drop: np.ndarray) -> np.ndarray:
        """The part of the input mask ``drop`` that the plan can stop reading: any input of a
        dense first map; whole channels of a group-1 convolution; nothing otherwise."""
        drop = np.asarray(drop, dtype=bool)
        first = self.ops[0]
        if isinstance(first, Dense):
            return drop
        if isinstance(first, Conv2d) and first.group == 1:
            channels = drop.reshape(first.in_shape[0], -1).all(axis=1)
            return np.repeat(channels, first.n_in // first.in_shape[0])
        return np.zeros_like(drop)

    def keep_inputs(self, keep: np.ndarray) -> LinearPlan:
        """The plan reading only the inputs ``keep`` (a mask; see :meth:`droppable_inputs`)."""
        keep = np.asarray(keep, dtype=bool)
        first = self.ops[0]
        if isinstance(first, Dense):
            new: LinearOp = Dense(first.weight[:, keep])
        elif isinstance(first, Conv2d):
            channels = keep.reshape(first.in_shape[0], -1)
            if not (channels.all(axis=1) | ~channels.any(axis=1)).all():
                raise ValueError(f"{first.name}: inputs can only be dropped by whole channels")
            new = first.keep_input_channels(np.nonzero(channels.all(axis=1))[0])
        else:  # pragma: no cover
            raise TypeError(type(first).__name__)
        return LinearPlan((new, *self.ops[1:]), self.rows)

    def describe(self) -> str:
        """The maps, in order."""
        text = " -> ".join(op.describe() for op in self.ops)
        if self.rows is not None and self.rows.size != self.ops[-1].n_out:
            text += f", {self.rows.size} of {self.ops[-1].n_out} outputs kept"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "ops": [op.to_dict() for op in self.ops],
            "rows": None if self.rows is None else self.rows.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearPlan:
        """Inverse of :meth:`to_dict`."""
        rows = d.get("rows")
        return cls(tuple(op_from_dict(op) for op in d["ops"]), None if rows is None else rows)
