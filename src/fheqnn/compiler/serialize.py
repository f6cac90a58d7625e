"""Plain-data (JSON) form of an IR program, so that a compiled model can be saved and reloaded."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..intervals import IntRange
from .ir import Elementwise, ElementwiseNode, Layer, Program, Quantizer
from .kernels import ELEMENTWISE_KERNELS
from .linear_ops import LinearPlan, MaxPool2d

FORMAT = 1
#: Programs with moved rounding grids (``Layer.grid_offset``): a reader that ignored the
#: offsets would round on the wrong grid, so versions that know only format 1 must refuse them.
FORMAT_MOVED_GRIDS = 2
#: Programs with layers computed by structured maps (``Layer.plan``: convolutions, pools) or
#: with an input shape: a reader that ignored the plan would compile a dense product instead.
FORMAT_PLANS = 3
_FORMATS = (FORMAT, FORMAT_MOVED_GRIDS, FORMAT_PLANS)


def _format(program: Program) -> int:
    if program.input_shape is not None or any(
        layer.plan or layer.input_pool for layer in program.layers
    ):
        return FORMAT_PLANS
    if any(layer.grid_offset.any() for layer in program.layers):
        return FORMAT_MOVED_GRIDS
    return FORMAT


def _arr(value: np.ndarray) -> Any:
    return np.asarray(value).tolist()


def quantizer_to_dict(q: Quantizer | None) -> dict | None:
    if q is None:
        return None
    return {
        "scale": _arr(q.scale),
        "zero_point": _arr(q.zero_point),
        "qmin": q.qmin,
        "qmax": q.qmax,
    }


def quantizer_from_dict(d: dict | None) -> Quantizer | None:
    if d is None:
        return None
    return Quantizer(np.asarray(d["scale"]), np.asarray(d["zero_point"]), d["qmin"], d["qmax"])


def chain_to_dict(chain: Elementwise | None) -> dict | None:
    if chain is None:
        return None
    return {
        "input": chain.input,
        "output": chain.output,
        "nodes": [
            {
                "op_type": n.op_type,
                "name": n.name,
                "inputs": list(n.inputs),
                "output": n.output,
                "attributes": [[k, v] for k, v in n.attributes],
            }
            for n in chain.nodes
        ],
        "constants": {k: _arr(v) for k, v in chain.constants.items()},
    }


def chain_from_dict(d: dict | None) -> Elementwise | None:
    if d is None:
        return None
    nodes = []
    for n in d["nodes"]:
        if n["op_type"] not in ELEMENTWISE_KERNELS:
            raise ValueError(f"unknown element-wise op {n['op_type']!r} in saved program")
        nodes.append(
            ElementwiseNode(
                n["op_type"],
                n["name"],
                tuple(n["inputs"]),
                n["output"],
                tuple((k, v) for k, v in n["attributes"]),
            )
        )
    constants = {k: np.asarray(v, dtype=np.float64) for k, v in d["constants"].items()}
    return Elementwise(tuple(nodes), d["input"], d["output"], constants)


def program_to_dict(program: Program) -> dict[str, Any]:
    """JSON-ready description of ``program`` (exact: integers stay integers)."""
    d: dict[str, Any] = {
        "format": _format(program),
        "source": program.source,
        "input_quantizer": quantizer_to_dict(program.input_quantizer),
        "layers": [
            {
                "name": layer.name,
                "weight": _arr(layer.weight),
                "input_range": [layer.input_range.lo, layer.input_range.hi],
                "offset": _arr(layer.offset),
                "acc_scale": _arr(layer.acc_scale),
                "bias": _arr(layer.bias),
                "activation": chain_to_dict(layer.activation),
                "output_quantizer": quantizer_to_dict(layer.output_quantizer),
                "round_lsbs": layer.round_lsbs,
                "rounding_exact": layer.rounding_exact,
                "grid_offset": _arr(layer.grid_offset),
                **({} if layer.plan is None else {"plan": layer.plan.to_dict()}),
                **({} if layer.input_pool is None else {"input_pool": layer.input_pool.to_dict()}),
            }
            for layer in program.layers
        ],
    }
    if program.input_shape is not None:
        d["input_shape"] = list(program.input_shape)
    return d


def program_from_dict(d: dict[str, Any]) -> Program:
    """Inverse of :func:`program_to_dict`."""
    if d.get("format") not in _FORMATS:
        raise ValueError(
            f"unsupported program format {d.get('format')!r} (expected one of {_FORMATS}): "
            "written by another version of fheqnn?"
        )
    layers = tuple(
        Layer(
            name=layer["name"],
            weight=np.asarray(layer["weight"], dtype=np.int64),
            input_range=IntRange(*layer["input_range"]),
            offset=np.asarray(layer["offset"], dtype=np.int64),
            acc_scale=np.asarray(layer["acc_scale"], dtype=np.float64),
            bias=np.asarray(layer["bias"], dtype=np.float64),
            activation=chain_from_dict(layer["activation"]),
            output_quantizer=quantizer_from_dict(layer["output_quantizer"]),
            round_lsbs=int(layer["round_lsbs"]),
            rounding_exact=bool(layer["rounding_exact"]),
            # Programs saved before grid offsets existed round on the unmoved grid.
            grid_offset=np.asarray(layer.get("grid_offset", 0), dtype=np.int64),
            plan=_plan_from_dict(layer.get("plan"), layer["name"], layer["weight"]),
            input_pool=None
            if layer.get("input_pool") is None
            else MaxPool2d.from_dict(layer["input_pool"]),
        )
        for layer in d["layers"]
    )
    quantizer = quantizer_from_dict(d["input_quantizer"])
    assert quantizer is not None
    shape = d.get("input_shape")
    return Program(
        quantizer, layers, source=d["source"], input_shape=None if shape is None else tuple(shape)
    )


def _plan_from_dict(d: dict | None, name: str, weight: Any) -> LinearPlan | None:
    """A saved plan, checked against the saved weights it must compute."""
    if d is None:
        return None
    plan = LinearPlan.from_dict(d)
    if not np.array_equal(plan.matrix(), np.asarray(weight, dtype=np.int64)):
        raise ValueError(f"layer {name!r}: its saved plan does not compute its saved weights")
    return plan
