"""The accumulator check: proven and measured bit-widths judged against ``n_accum_bits``.

Facts are computed elsewhere (the range analysis in the IR, Concrete's measurement on the
calibration rows); this module only compares them with the budget and reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import AccumulatorOverflowError, InternalError
from ..intervals import IntRange, bits_for_range
from .ir import Program


@dataclass(frozen=True)
class LayerWidths:
    """Bit-width facts of one layer.

    Attributes:
        layer: the layer's name (from its ONNX node).
        neurons: neurons of the layer (table lookups when ``lookup_bits`` is set).
        max_nonzeros: largest number of non-zero weights of one neuron.
        proven_lo, proven_hi, proven_bits: worst-case accumulator over every possible input.
        measured_lo, measured_hi, measured_bits: accumulator seen on the calibration rows
            (``None`` before measurement).
        circuit_bits: width of the accumulator in the circuit (shifted to be non-negative,
            rounded), which bounds what Concrete can ever see; never above ``proven_bits``.
        round_lsbs: accumulator bits rounded away before the lookup.
        lookup_bits: precision of the lookup input after rounding (``None``: output layer).
        allowed_bits: ``n_accum_bits`` (``None``: no budget).
        over_budget: the channels (convolutional layers) or neurons whose proven accumulator
            exceeds ``allowed_bits``, in words (``None``: none).
    """

    layer: str
    neurons: int
    max_nonzeros: int
    proven_lo: int
    proven_hi: int
    proven_bits: int
    measured_lo: int | None
    measured_hi: int | None
    measured_bits: int | None
    circuit_bits: int
    round_lsbs: int
    lookup_bits: int | None
    allowed_bits: int | None
    over_budget: str | None = None

    @property
    def ok(self) -> bool:
        """Within the budget, proven and measured."""
        if self.allowed_bits is None:
            return True
        measured = self.measured_bits or 0
        return self.proven_bits <= self.allowed_bits and measured <= self.allowed_bits

    def as_dict(self) -> dict:
        """Plain data (JSON-ready), ``ok`` included."""
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class BitWidthReport:
    """Per-layer bit-widths of a program, with the budget they are judged against."""

    layers: tuple[LayerWidths, ...]
    n_accum_bits: int | None

    @property
    def ok(self) -> bool:
        """Every layer within budget."""
        return all(layer.ok for layer in self.layers)

    def as_dicts(self) -> list[dict]:
        """One dict per layer."""
        return [layer.as_dict() for layer in self.layers]

    @classmethod
    def from_summary(cls, summary: dict) -> BitWidthReport:
        """The report a compiled model's ``report.json`` (:meth:`CompiledModel.summary`) holds.

        Fields that later versions added to a layer's dict are ignored.

        Raises:
            KeyError, TypeError, AttributeError: ``summary`` is not such a report.
        """
        fields = set(LayerWidths.__dataclass_fields__)
        rows = tuple(
            LayerWidths(**{k: v for k, v in d.items() if k in fields}) for d in summary["layers"]
        )
        return cls(rows, summary["n_accum_bits"])

    def to_text(self) -> str:
        """A fixed-width table."""
        head = (
            "layer",
            "neurons",
            "max nnz",
            "proven range",
            "proven bits",
            "measured range",
            "measured bits",
            "lookup bits (before -> after rounding)",
            "allowed",
            "ok",
        )
        rows = []
        for w in self.layers:
            measured = "-" if w.measured_lo is None else f"[{w.measured_lo}, {w.measured_hi}]"
            if w.lookup_bits is None:
                lookup = "-"
            elif w.round_lsbs:
                lookup = f"{w.circuit_bits} -> {w.lookup_bits}"
            else:
                lookup = str(w.lookup_bits)
            rows.append(
                (
                    w.layer,
                    str(w.neurons),
                    str(w.max_nonzeros),
                    f"[{w.proven_lo}, {w.proven_hi}]",
                    str(w.proven_bits),
                    measured,
                    "-" if w.measured_bits is None else str(w.measured_bits),
                    lookup,
                    "-" if w.allowed_bits is None else str(w.allowed_bits),
                    "yes" if w.ok else "NO",
                )
            )
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head))]
        lines.append("  ".join("-" * n for n in widths))
        lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def analyse(
    program: Program,
    n_accum_bits: int | None,
    measured: dict[str, IntRange] | None = None,
) -> BitWidthReport:
    """Collect the proven (and, if given, measured) accumulator widths of every layer."""
    rows = []
    for layer in program.layers:
        proven = layer.proven_range()
        seen = (measured or {}).get(layer.name)
        rows.append(
            LayerWidths(
                layer=layer.name,
                neurons=layer.n_outputs,
                max_nonzeros=layer.max_nonzeros(),
                proven_lo=proven.lo,
                proven_hi=proven.hi,
                proven_bits=proven.bits,
                measured_lo=None if seen is None else seen.lo,
                measured_hi=None if seen is None else seen.hi,
                measured_bits=None if seen is None else bits_for_range(seen.lo, seen.hi),
                circuit_bits=layer.circuit_bits(),
                round_lsbs=layer.round_lsbs,
                lookup_bits=layer.lookup_bits() if layer.is_hidden else None,
                allowed_bits=n_accum_bits,
                over_budget=None
                if n_accum_bits is None or proven.bits <= n_accum_bits
                else layer.units_over(n_accum_bits),
            )
        )
    return BitWidthReport(tuple(rows), n_accum_bits)


def check(report: BitWidthReport) -> None:
    """Raise if a layer is over budget (the user's error) or measured above proof (our bug)."""
    for w in report.layers:
        if w.circuit_bits > max(w.proven_bits, 1):
            raise InternalError(
                f"layer {w.layer!r}: the circuit holds the accumulator on {w.circuit_bits} bits, "
                f"more than the proven {w.proven_bits}. This is a bug in fheqnn; please report it."
            )
        if w.measured_lo is not None and (
            w.measured_lo < w.proven_lo or w.measured_hi > w.proven_hi
        ):
            raise InternalError(
                f"layer {w.layer!r}: Concrete measured accumulators in [{w.measured_lo}, "
                f"{w.measured_hi}], outside the proven worst case [{w.proven_lo}, {w.proven_hi}]. "
                "This is a bug in fheqnn's range analysis; please report it."
            )
    bad = [w for w in report.layers if not w.ok]
    if bad:
        w = bad[0]
        measured = "" if w.measured_bits is None else f", measured {w.measured_bits} bits"
        others = f" ({len(bad) - 1} more layer(s) over budget)" if len(bad) > 1 else ""
        # Each neuron may fit alone while the layer's lowest and highest values together do
        # not (the circuit holds them in one range).
        where = (
            f" in {w.over_budget}"
            if w.over_budget
            else " (each neuron fits alone; the lowest and highest together do not)"
        )
        raise AccumulatorOverflowError(
            f"layer {w.layer!r}: accumulator needs {w.proven_bits} bits in the worst case{where} "
            f"(range [{w.proven_lo}, {w.proven_hi}]{measured}) but n_accum_bits="
            f"{w.allowed_bits}{others}. Its neurons have up to {w.max_nonzeros} non-zero weights: "
            "keep fewer active weights per neuron (pruning), use fewer weight or activation bits, "
            "or raise n_accum_bits (then round accumulators before the lookups to keep them "
            f"cheap).\n{report.to_text()}"
        )


def stability_text(stability: dict | None) -> str | None:
    """How ``compile`` and ``report`` state a compiled model's repeatability, from the
    ``stability`` record of its ``report.json`` (``None``: a report written before it had one).
    """
    if not isinstance(stability, dict) or "bit_exact" not in stability:
        return None
    if stability["bit_exact"]:
        return (
            "stability: bit-exact (exact rounding or none, error probability 2**-40 per "
            "lookup): every encrypted run gives the integer interpreter's answer"
        )
    reasons = []
    if stability.get("approximate_rounding"):
        reasons.append("approximate rounding")
    p_error = stability.get("p_error")
    if isinstance(p_error, float):
        reasons.append(f"an error probability of {p_error:g} per lookup")
    elif p_error is None and stability.get("global_p_error") is None:
        reasons.append("Concrete's default error bound (1e-5 per circuit)")
    elif p_error is not None:
        reasons.append("the caller's Concrete configuration")
    if isinstance(stability.get("global_p_error"), float):
        reasons.append(f"an error probability of {stability['global_p_error']:g} per circuit run")
    measured = ""
    rows, total = stability.get("unstable_calibration_rows"), stability.get("calibration_rows")
    if rows is not None and total:
        budget = stability.get("max_unstable")
        measured = (
            f"; {rows} of {total} calibration rows changed prediction over "
            f"{stability.get('draws', '?')} draws of the compiler's model of the circuit's noise"
            + (" (not judged: max_unstable none)" if budget is None else f" (budget {budget:.1%})")
        )
    effect = "a row near the decision boundary can get a different answer"
    if stability.get("guard_ok") is False:
        measured += "; the accuracy guard was NOT kept under this noise (see its warning)"
        effect = "answers can differ from the unrounded network's and"
    return (
        f"stability: not bit-exact ({' and '.join(reasons)}){measured}: {effect} from one run "
        "to the next; compile with "
        "--exact (exact=True) for bit-exact answers"
    )
