"""Option groups shared by several commands, and argparse types that check a value where it is
typed."""

from __future__ import annotations

import argparse
from typing import Any

from .common import CliError


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type of a list of whole numbers >= 1 separated by commas (``16,64``)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, such as 16,64, got {text!r}"
        ) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"every number must be >= 1, got {text!r}")
    return values


def _add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=("mlp", "conv"),
        default="mlp",
        help="mlp (default): the seed's sparse quantized MLP; conv: a sparse quantized "
        "convolutional network on images (ConvNetClassifier)",
    )
    p.add_argument(
        "--channels",
        type=_int_list,
        default=None,
        metavar="C1,C2,...",
        help="--model conv: filters of each convolution (default 16,64)",
    )
    p.add_argument("--n-layers", type=int, default=3, help="linear layers (default 3)")
    p.add_argument(
        "--multiplier", type=float, default=4, help="hidden width = features x this (default 4)"
    )
    p.add_argument("--n-w-bits", type=int, default=3, help="weight bits (default 3)")
    p.add_argument("--n-a-bits", type=int, default=3, help="activation/input bits (default 3)")
    p.add_argument("--n-accum-bits", type=int, default=8, help="accumulator budget (default 8)")
    p.add_argument(
        "--prune",
        type=float,
        default=0.0,
        help="fraction of hidden neurons to prune, in [0, 1) (default 0)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 200; --model conv: 120)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _rounding(value: str) -> Any:
    if value in ("auto", "off"):
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("rounding is 'auto', 'off' or a number of bits") from exc


def _p_error(value: str) -> Any:
    """argparse type of --p-error: 'auto', 'default' (Concrete's default) or a probability."""
    if value in ("auto", "default"):
        return "auto" if value == "auto" else None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'default' or a probability such as 1e-3, got {value!r}"
        ) from exc


_P_ERROR_HELP = (
    "error probability per lookup: 'auto' (default: of 1e-2, 1e-3 and 1e-4, each with the "
    "rounding the accuracy guard keeps under its noise, the one Concrete's cost estimate ranks "
    "cheapest; 2**-40 with --exact), 'default' (Concrete's default: an error bound of 1e-5 for "
    "the whole circuit) or a number"
)


def _add_compile_choices(
    p: argparse.ArgumentParser, *, exact: bool = True, strict: bool = True
) -> None:
    """The compile choices, defined once for every command that compiles (read back by
    :func:`_compile_options`); ``exact`` and ``strict`` only where the command uses them."""
    p.add_argument(
        "--rounding",
        type=_rounding,
        default="auto",
        help="'auto' (default), 'off', or the lookup input precision in bits",
    )
    p.add_argument(
        "--approximate",
        action="store_true",
        help="approximate rounding only: one PBS per neuron, rare off-by-one errors "
        "(default: the cheaper of approximate and exact that keeps accuracy)",
    )
    if exact:
        p.add_argument(
            "--exact",
            action="store_true",
            help="the bit-exact profile: exact rounding (or none) and an error probability of "
            "2**-40 per lookup, so that every encrypted answer equals the integer "
            "interpreter's (slower than the default)",
        )
    if strict:
        p.add_argument(
            "--strict",
            action="store_true",
            help="fail when compile-time choices lose accuracy, instead of warning",
        )
    p.add_argument("--p-error", type=_p_error, default="auto", help=_P_ERROR_HELP)
    p.add_argument(
        "--max-unstable",
        type=_max_unstable,
        default=_DEFAULT,
        metavar="SHARE",
        help="the stability budget: the most share of calibration rows whose prediction may "
        "change between runs under the circuit's noise (default 0: none), or 'none' (not "
        "judged: the fastest circuit, whose answers can differ from run to run)",
    )


#: An option left at the library's default.
_DEFAULT = object()


def _max_unstable(value: str) -> Any:
    """argparse type of ``--max-unstable``: 'none' or a share in [0, 1] (checked by the field's
    declared bounds)."""
    from ..compiler.options import CompileOptions

    if value == "none":
        return None
    return _field_type(CompileOptions, "max_unstable")(value)


def _compile_options(args: argparse.Namespace, **values: Any) -> Any:
    """The validated compile options of the command line (one check, shared with the API)."""
    from ..compiler.options import CompileOptions

    exact = getattr(args, "exact", False)
    approximate = getattr(args, "approximate", False)
    if exact and approximate:
        raise CliError("give --exact or --approximate, not both")
    if exact and args.p_error != "auto":
        from ..compiler.options import EXACT_P_ERROR

        if args.p_error is None or args.p_error > EXACT_P_ERROR:
            raise CliError(
                "--exact sets the error probability per lookup to 2**-40: give no --p-error "
                "(or one of at most 2**-40)"
            )
    budget = getattr(args, "max_unstable", _DEFAULT)
    if budget is not _DEFAULT:
        values["max_unstable"] = budget
    return CompileOptions(
        rounding=args.rounding,
        rounding_exact=False if approximate else None,
        exact=exact,
        p_error=args.p_error,
        strict=getattr(args, "strict", False),
        **values,
    )


def _field_type(cls: type, name: str) -> Any:
    """The argparse type of an option that sets field ``name`` of configuration ``cls``: it
    parses the text and applies the constraint the field declares
    (:func:`fheqnn.validation.bounded`), so the bound is written once, beside the field."""
    from ..errors import InvalidParameterError
    from ..validation import field_bounds

    bounds = field_bounds(cls, name)

    def parse(text: str) -> Any:
        try:
            value = bounds.parse(text)
        except ValueError:
            kind = "a whole number" if bounds.integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return bounds.check(name, value)
        except InvalidParameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _batch_size(value: str) -> int:
    """argparse type of ``--batch-size``: rows per circuit call, in [1, MAX_BATCH_SIZE]."""
    from ..compiler.options import MAX_BATCH_SIZE

    number = _positive_int(value)
    if number > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BATCH_SIZE} rows, got {number}")
    return number


def _positive_int(value: str) -> int:
    """argparse type of a row count: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number of rows >= 1, got {number}")
    return number
