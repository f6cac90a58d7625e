"""Compilation options, validated once where they enter (API, estimators and CLI alike)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..contract import MAX_BATCH_SIZE
from ..errors import InvalidParameterError
from ..validation import Bounds, bounded, check_bool, check_fields, check_int, check_number

#: Widest accumulator budget accepted (bits); Concrete's lookups stop far below it anyway.
MAX_ACCUM_BITS = 32
#: Lookup input precisions accepted by ``rounding=<bits>``.
MAX_LOOKUP_BITS = 16
#: Error probabilities per lookup accepted. Above 0.5 a lookup is wrong more often than right;
#: below 2**-64 the key size grows without any measurable gain (Concrete's default is 2**-40).
P_ERROR_RANGE = (2.0**-64, 0.5)
#: Error probabilities per lookup that ``p_error="auto"`` tries, largest first. A bootstrap
#: error moves a lookup's input by about one step, so a few in a row rarely change a
#: prediction; the guard judges each candidate under the noise model of its error probability
#: (``fheqnn.compiler.noise``), and Concrete's cost estimate of the compiled circuits decides.
P_ERROR_CANDIDATES = (1e-2, 1e-3, 1e-4)

#: The bit-exact profile's error probability per lookup (``CompileOptions(exact=True)``).
EXACT_P_ERROR = 2.0**-40

#: Default stability budget: the most share of calibration rows whose prediction may change
#: from one encrypted run to the next under the circuit's noise: none. Held-out rows change 3-4
#: x as often as calibration rows (breast cancer), so even half a percent of calibration rows
#: let 3.5-5.6 % of test rows change (``benchmarks/results/stability.md``).
DEFAULT_MAX_UNSTABLE = 0.0


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
        rounding_exact: ``True``: exact rounding (bit-exact with the interpreter; costs about
            one extra small lookup per rounded bit and neuron). ``False``: Concrete's
            approximate rounding (one lookup per neuron; values near the middle of a rounding
            step may land one step off, at random, in simulation as in encryption). ``None``
            (default): ``"auto"`` rounding tries both and keeps the cheaper one that holds the
            guard (approximate rounding scored over several random draws); an explicit
            ``rounding`` then uses approximate rounding.
        min_agreement: the guard without labels, in [0, 1]. Classifiers: least share of
            calibration rows whose class matches the unrounded program's (default 0.99).
            Regressors: least R2 of the compiled program's outputs against the unrounded
            program's on the calibration rows (default 0.97, the share of their variance
            kept; ``guard.REGRESSION_MIN_AGREEMENT``). ``None``: the default for the output.
        min_boundary_agreement: the guard for classifiers, with or without labels: least
            agreement with the unrounded program on the calibration rows closest to the
            decision boundary (the 10 %, at least 50, with the smallest gap between the two
            largest outputs), in [0, 1]. A network fits its training rows with wide margins, so
            agreement over all of them hides what rounding does to unseen rows; near the
            boundary it shows.
        max_accuracy_loss: the guard with calibration labels: most calibration accuracy (R2
            for regressors) the compiled program may lose against the unrounded one, in
            [0, 1] (0.005: half a point); for classifiers never less than one calibration row
            (1 / n_rows), the finest loss their accuracy can show.
        strict: a choice that breaks the guard (e.g. an explicit ``rounding`` that loses
            accuracy, or too few calibration rows to check it) is an
            :class:`~fheqnn.errors.AccuracyLossError` instead of a
            :class:`~fheqnn.errors.CompileAccuracyWarning`.
        p_error: Concrete's error probability per lookup. ``"auto"`` (default): each of
            :data:`P_ERROR_CANDIDATES` gets the rounding the guard chooses under that error
            probability's noise model, and the one Concrete's own cost estimate of the
            compiled circuit (its complexity, a deterministic figure) ranks cheapest wins
            (ties: smaller evaluation keys, then the smaller error probability); ``None``:
            Concrete's default (an error bound of 1e-5 for the whole circuit). A number (up to
            0.5) is judged by the guard under its own noise (``fheqnn.compiler.noise``): one
            that breaks the guard or ``max_unstable`` warns (``strict``: raises), rounding or
            not.
        global_p_error: error probability per circuit run (``None``: not set). A run holds
            ``batch_size`` rows. The guard judges it as an error probability of at most that
            much per lookup (with ``p_error``: the smaller of the two).
        batch_size: rows per circuit call, in [1, :data:`MAX_BATCH_SIZE`]. The circuit takes
            ``(batch_size, n_features)`` integers; the client encrypts rows in chunks of that
            many (the last one padded, its padding dropped after decryption). Each call pays a
            fixed cost (Concrete's runtime context and the bootstrap keys' conversion to the
            Fourier domain, ~0.1 s with large keys) that batching shares among its rows:
            throughput grows, one row's latency does not shrink. Concrete's default error
            bound applies per call, so with neither ``p_error`` nor ``global_p_error`` set, a
            larger batch may get slightly larger keys.
        exact: the bit-exact profile: exact rounding (or none) and an error probability of
            :data:`EXACT_P_ERROR` (2**-40) per lookup, so that every encrypted answer equals
            the integer interpreter's (``rounding_exact=False`` or a larger ``p_error``
            contradict it and are refused). ``False`` (default): the fast profile, within the
            stability budget ``max_unstable``.
        max_unstable: the stability budget of the guard: the most share of calibration rows
            whose predicted class may change between runs under the circuit's noise (the
            noise model's :data:`~fheqnn.compiler.noise.STABILITY_DRAWS` draws), in [0, 1];
            ``None``: stability is not judged (the fastest answers, which can differ from run
            to run). Default :data:`DEFAULT_MAX_UNSTABLE`.
        align_rounding: move each neuron's rounding grid by a clear constant chosen on the
            calibration rows (:func:`fheqnn.compiler.passes.align_rounding_grid`) so that
            rounding changes fewer lookup outputs at the same precision; free under
            encryption. ``True`` (default): with an explicit ``rounding=<bits>`` moved grids
            are always kept (Concrete's simulation on held-out folds: +2.1 points on breast
            cancer and +3.7 on digits at 3-bit lookups); with ``"auto"`` the precision is
            chosen first without moving grids (same cost), then the grids are moved and kept
            if that keeps the guard on rows they were not fitted to (+0.3 / +0.8 points held
            out). ``False``: never moved. See ``benchmarks/results/accuracy.md``, sessions 4
            and 5.
    """

    n_accum_bits: int | None = bounded(None, Bounds(True, 1, MAX_ACCUM_BITS, optional=True))
    rounding: str | int = "auto"
    rounding_exact: bool | None = None
    min_agreement: float | None = bounded(None, Bounds(False, 0.0, 1.0, optional=True))
    min_boundary_agreement: float = bounded(0.98, Bounds(False, 0.0, 1.0))
    max_accuracy_loss: float = bounded(0.005, Bounds(False, 0.0, 1.0))
    strict: bool = False
    p_error: float | str | None = "auto"
    global_p_error: float | None = bounded(None, Bounds(False, *P_ERROR_RANGE, optional=True))
    batch_size: int = bounded(1, Bounds(True, 1, MAX_BATCH_SIZE))
    align_rounding: bool = True
    exact: bool = False
    max_unstable: float | None = bounded(
        DEFAULT_MAX_UNSTABLE, Bounds(False, 0.0, 1.0, optional=True)
    )

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        check_fields(self)  # the bounds declared beside the fields
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
        if self.rounding_exact is not None:
            put("rounding_exact", check_bool("rounding_exact", self.rounding_exact))
        put("strict", check_bool("strict", self.strict))
        if self.p_error != "auto" and self.p_error is not None:
            put("p_error", check_number("p_error", self.p_error, *P_ERROR_RANGE))
        put("align_rounding", check_bool("align_rounding", self.align_rounding))
        if check_bool("exact", self.exact):
            self._exact_profile(put)

    def _exact_profile(self, put: Any) -> None:
        """Settle the bit-exact profile's rounding and error probability; refuse options that
        contradict it."""
        if self.rounding_exact is False:
            raise InvalidParameterError(
                "exact=True rounds exactly (or not at all): rounding_exact=False contradicts it"
            )
        if self.global_p_error is not None:
            raise InvalidParameterError(
                "exact=True sets the error probability per lookup (2**-40): give no global_p_error"
            )
        if self.p_error == "auto":
            put("p_error", EXACT_P_ERROR)
        elif self.p_error is None or self.p_error > EXACT_P_ERROR:
            shown = "Concrete's default" if self.p_error is None else f"{self.p_error:g}"
            raise InvalidParameterError(
                f"exact=True needs an error probability per lookup of at most 2**-40, got "
                f"p_error={shown}"
            )
        put("rounding_exact", True)

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

    def concrete_options(self, p_error: float | None = None) -> dict[str, Any]:
        """What goes into Concrete's configuration (``p_error``: the one chosen for ``"auto"``)."""
        chosen = p_error if self.p_error == "auto" else self.p_error
        if chosen is None and self.global_p_error is None:
            return {}
        return {"p_error": chosen, "global_p_error": self.global_p_error}
