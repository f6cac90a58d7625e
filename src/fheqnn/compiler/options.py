"""Compilation options, validated once where they enter (API, estimators and CLI alike)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidParameterError
from ..validation import check_bool, check_int, check_number

#: Widest accumulator budget accepted (bits); Concrete's lookups stop far below it anyway.
MAX_ACCUM_BITS = 32
#: Lookup input precisions accepted by ``rounding=<bits>``.
MAX_LOOKUP_BITS = 16
#: Error probabilities per lookup accepted. Above 0.5 a lookup is wrong more often than right;
#: below 2**-64 the key size grows without any measurable gain (Concrete's default is 2**-40).
P_ERROR_RANGE = (2.0**-64, 0.5)


@dataclass(frozen=True)
class CompileOptions:
    """How to compile a network.

    Attributes:
        n_accum_bits: accumulator budget in bits; every layer's proven worst case (and what
            Concrete measures) must fit, else :class:`~fheqnn.AccumulatorOverflowError` before
            compiling. ``None``: no budget.
        rounding: ``"auto"`` (lossless rounding, then lower lookup precision while predictions on
            the calibration rows keep ``min_agreement`` with the unrounded program), an int (the
            lookup input precision in bits, for every hidden layer), or ``"off"`` (``None`` is
            read as ``"off"``).
        rounding_exact: exact rounding (bit-exact with the interpreter; costs extra small
            lookups) or Concrete's approximate rounding (one lookup per neuron, rare off-by-one).
        min_agreement: the accuracy guard of ``"auto"`` rounding, in [0, 1].
        p_error: Concrete's error probability per lookup (``None``: Concrete's default).
        global_p_error: error probability per circuit run (``None``: not set).
    """

    n_accum_bits: int | None = None
    rounding: str | int = "auto"
    rounding_exact: bool = True
    min_agreement: float = 0.99
    p_error: float | None = None
    global_p_error: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.n_accum_bits is not None:
            put("n_accum_bits", check_int("n_accum_bits", self.n_accum_bits, 1, MAX_ACCUM_BITS))
        rounding = "off" if self.rounding is None else self.rounding
        if isinstance(rounding, str):
            if rounding not in ("auto", "off"):
                raise InvalidParameterError(
                    "rounding must be 'auto', 'off' or a lookup precision in bits, "
                    f"got {rounding!r}"
                )
        else:
            rounding = check_int("rounding (lookup bits)", rounding, 1, MAX_LOOKUP_BITS)
        put("rounding", rounding)
        put("rounding_exact", check_bool("rounding_exact", self.rounding_exact))
        put("min_agreement", check_number("min_agreement", self.min_agreement, 0.0, 1.0))
        for name in ("p_error", "global_p_error"):
            value = getattr(self, name)
            if value is not None:
                put(name, check_number(name, value, *P_ERROR_RANGE))

    @classmethod
    def from_kwargs(cls, **values: Any) -> CompileOptions:
        """Options from keyword arguments; an unknown name is an error that lists the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise InvalidParameterError(
                f"unknown compile option(s) {unknown}; valid options are {valid}"
            )
        return cls(**values)

    def replace(self, **values: Any) -> CompileOptions:
        """A copy with some options changed (validated again)."""
        return CompileOptions.from_kwargs(**{**asdict(self), **values})

    def concrete_options(self) -> dict[str, Any]:
        """What goes into Concrete's configuration."""
        if self.p_error is None and self.global_p_error is None:
            return {}
        return {"p_error": self.p_error, "global_p_error": self.global_p_error}
