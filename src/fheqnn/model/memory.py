"""Whether a network can be trained in this machine's memory, told before anything is built.

Hidden layers are ``n_hidden_neurons_multiplier`` x ``n_features`` wide, so weights grow with
the square of the number of columns: 10,000 columns at the default multiplier 4 make 40,000-wide
layers, 2 billion weights, and training grew to 21.6 GB before the system killed it. The
estimate below is checked against the memory available before the torch module exists, and a
network that cannot fit is refused with its size and the options that shrink it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from ..errors import InsufficientMemoryError

#: Bytes of training memory per weight or bias. Each weight is held several times over: the
#: dense weight and its masked copy, its gradient, AdamW's two moments, the brevitas quantized
#: weight and what autograd keeps of it, the pruning mask and the per-neuron top-k that chooses
#: it. Measured (``benchmarks/training_memory.py --features 400,800,1200,1600``: the peak
#: resident memory of ``NeuralNetClassifier(max_epochs=1).fit`` on 600 random rows, above the
#: memory after imports, 3 layers at the default multiplier): 321 MB for 3.2 million weights,
#: 704 MB for 12.8 million, 1677 MB for 28.8 million, 2071 MB for 51.2 million (the peak is
#: not linear: 58 bytes per weight at 28.8 million, 40 at 51.2). With 48 and the other terms
#: below, the estimate is 37 %, 30 %, 2 % and 35 % above those peaks: it errs on the side of
#: refusing.
BYTES_PER_PARAMETER = 48

#: Bytes per neuron and row of a training batch: each layer's input quantizer, linear output
#: and activation, kept for the backward pass (float32), with room for their gradients.
BYTES_PER_ACTIVATION = 48

#: Bytes per input value (row x feature) held while training: the float64 rows, their
#: standardized float64 copy and the float32 copy torch trains on.
BYTES_PER_INPUT_VALUE = 24

#: Torch, brevitas and skorch's own working memory beyond the figures above (not fitted: it
#: keeps the estimate of small networks above their measured peaks, 37 % above at 3.2 million
#: weights).
FIXED_BYTES = 256 << 20


@dataclass(frozen=True)
class TrainingMemory:
    """An estimate of the memory training a network takes.

    Attributes:
        widths: neurons per layer, input features first, outputs last.
        parameters: weights and biases.
        total_bytes: the estimate (parameters, batch activations, the rows, a fixed share).
    """

    widths: tuple[int, ...]
    parameters: int
    total_bytes: int


def hidden_width(input_dim: int, multiplier: float) -> int:
    """A hidden layer's width, as the network builds it."""
    return max(1, round(input_dim * multiplier))


def estimate_training_memory(
    input_dim: int,
    n_layers: int,
    n_outputs: int,
    multiplier: float,
    *,
    batch_size: int = 64,
    n_rows: int = 0,
) -> TrainingMemory:
    """The memory training such a network takes, in bytes (see the constants above): pure
    arithmetic, nothing allocated."""
    hidden = hidden_width(input_dim, multiplier)
    widths = (input_dim, *([hidden] * (n_layers - 1)), n_outputs)
    parameters = sum(a * b + b for a, b in pairwise(widths))
    total = (
        parameters * BYTES_PER_PARAMETER
        + batch_size * sum(widths) * BYTES_PER_ACTIVATION
        + n_rows * input_dim * BYTES_PER_INPUT_VALUE
        + FIXED_BYTES
    )
    return TrainingMemory(tuple(widths), parameters, total)


def available_memory_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Memory available to a new allocation, in bytes: Linux's ``MemAvailable`` (free memory
    plus the page cache it can reclaim), else the free physical pages ``os.sysconf`` reports;
    ``None`` when neither is known (then nothing is refused)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return int(pages) * int(page_size)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.0f} MB"


def check_training_fits(
    input_dim: int,
    n_layers: int,
    n_outputs: int,
    multiplier: float,
    *,
    batch_size: int = 64,
    n_rows: int = 0,
    available: int | None = None,
    multiplier_name: str = "n_hidden_neurons_multiplier",
) -> TrainingMemory:
    """Refuse, before anything is allocated, a network whose training cannot fit in memory.

    Args:
        input_dim, n_layers, n_outputs, multiplier: the network's shape.
        batch_size, n_rows: the training batch and the rows trained on (0: the module alone).
        available: bytes available (default: :func:`available_memory_bytes`; unknown: no check).
        multiplier_name: how the message names the multiplier option.

    Raises:
        InsufficientMemoryError: the estimate exceeds the available memory; one line with the
            size, the memory available and the multiplier that would fit.
    """
    need = estimate_training_memory(
        input_dim, n_layers, n_outputs, multiplier, batch_size=batch_size, n_rows=n_rows
    )
    available = available_memory_bytes() if available is None else available
    if available is None or need.total_bytes <= available:
        return need
    fitting = _largest_fitting_multiplier(
        input_dim, n_layers, n_outputs, multiplier, batch_size, n_rows, available
    )
    shrink = (
        f"lower {multiplier_name} (at most {fitting:.3g} fits)"
        if fitting is not None
        else f"lower {multiplier_name}"
    )
    raise _refusal(
        need.total_bytes,
        available,
        f"{need.parameters:,} weights: {input_dim} features, hidden width "
        f"{_width_text(need.widths)}",
        f"{shrink}, or select fewer feature columns",
    )


def _refusal(total_bytes: int, available: int, what: str, advice: str) -> InsufficientMemoryError:
    """The error of a training that needs ``total_bytes`` where ``available`` is free."""
    return InsufficientMemoryError(
        f"training this network needs about {_gb(total_bytes)} of memory ({what}) but "
        f"{_gb(available)} is available: {advice}"
    )


def _width_text(widths: Sequence[int]) -> str:
    hidden = widths[1:-1]
    return str(hidden[0]) if hidden else "none"


def _largest_fitting_multiplier(
    input_dim: int,
    n_layers: int,
    n_outputs: int,
    multiplier: float,
    batch_size: int,
    n_rows: int,
    available: int,
) -> float | None:
    """The largest multiplier below ``multiplier`` whose estimate fits (bisection; ``None``:
    not even the narrowest network fits, e.g. the rows alone are too many)."""

    def fits(m: float) -> bool:
        estimate = estimate_training_memory(
            input_dim, n_layers, n_outputs, m, batch_size=batch_size, n_rows=n_rows
        )
        return estimate.total_bytes <= available

    low, high = 1.0 / max(1, input_dim), float(multiplier)
    if not fits(low):
        return None
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def check_bytes_fit(
    total_bytes: int, what: str, advice: str, *, available: int | None = None
) -> None:
    """Refuse a training whose estimate, ``total_bytes``, exceeds the memory available.

    ``what`` describes the network's size and ``advice`` what would make it smaller, both in
    the message of the :class:`InsufficientMemoryError`.
    """
    available = available_memory_bytes() if available is None else available
    if available is None or total_bytes <= available:
        return
    raise _refusal(total_bytes, available, what, advice)
