"""What a benchmark measures: the profiles and the options record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILES = {
    # A taste a user runs in a few minutes on 2 cores: one data set, four cells, two
    # encrypted rows each (latency and keys included), no reference.
    "quick": {
        "datasets": ["iris"],
        "prune": [0.0, 0.5],
        "widths": [1, 4],
        "profiles": ["default"],
        "seeds": [0],
        "epochs": 40,
        "encrypt_rows": 2,
        "repeats": 1,
        "float_baseline": True,
        "throughput_rows": 0,
    },
    # What the seed's user varies (pruning x width x data set), both compile profiles, three
    # seeds per cell, real encryption: run by hand on a quiet machine (hours; resumable).
    "full": {
        "datasets": ["breast_cancer", "digits", "wine", "iris"],
        "prune": [0.0, 0.25, 0.5, 0.75],
        "widths": [1, 2, 4],
        "profiles": ["default", "exact"],
        "seeds": [0, 1, 2],
        "epochs": 200,
        "encrypt_rows": 5,
        "repeats": 3,
        "float_baseline": True,
        "throughput_rows": 0,
    },
}

#: The compile profiles a sweep can measure (``exact``: the bit-exact one, ``--exact``).
COMPILE_PROFILES = ("default", "exact")

#: The seed's hidden-width multiplier (``n_hidden_neurons_multiplier``).
DEFAULT_WIDTH = 4


#: Rows per circuit call whose encrypted throughput is measured (``throughput_rows`` > 0).
THROUGHPUT_BATCHES = (1, 8, 32)


@dataclass
class BenchOptions:
    """What to measure (see ``PROFILES`` for the presets).

    ``throughput_rows``: test rows over which :func:`throughput` measures encrypted rows/s for
    each of ``throughput_batches`` (0: not measured; each batch size costs a compilation and
    a key generation on top).
    """

    datasets: list[str]
    prune: list[float]
    epochs: int
    encrypt_rows: int
    repeats: int
    float_baseline: bool = True
    seed: int = 0
    rounding: Any = "auto"
    approximate: bool = False
    p_error: float | str | None = "auto"
    throughput_rows: int = 0
    throughput_batches: tuple[int, ...] = THROUGHPUT_BATCHES
    exact: bool = False
    #: The stability budget passed to the compiler (``"default"``: the compiler's own).
    max_unstable: Any = "default"
    #: Hidden-width multipliers swept (``n_hidden_neurons_multiplier``).
    widths: list[int] = field(default_factory=lambda: [DEFAULT_WIDTH])
    #: Compile profiles swept (of :data:`COMPILE_PROFILES`); each cell sets ``exact`` from it.
    profiles: list[str] = field(default_factory=lambda: ["default"])
    #: Seeds swept; each cell sets ``seed`` from it.
    seeds: list[int] = field(default_factory=lambda: [0])
    #: The reference environment's Python: when given, Concrete ML's network is measured at
    #: every (data set, width, pruning, seed) of the sweep, in the same run.
    reference_python: str | None = None

    def settings(self) -> dict[str, Any]:
        """What, besides the cell, decides a row's figures: a row measured with other
        settings is not reused when a sweep resumes."""
        return {
            "epochs": self.epochs,
            "encrypt_rows": self.encrypt_rows,
            "repeats": self.repeats,
            "rounding": self.rounding,
            "approximate": self.approximate,
            "p_error": self.p_error,
            "max_unstable": self.max_unstable,
            "throughput_rows": self.throughput_rows,
        }

    def compile_options(self) -> dict[str, Any]:
        """What the bench passes to ``compile`` (the compiler's defaults for the rest)."""
        options: dict[str, Any] = {
            "rounding": self.rounding,
            "rounding_exact": False if self.approximate else None,
            "p_error": self.p_error,
            "exact": self.exact,
        }
        if self.max_unstable != "default":
            options["max_unstable"] = self.max_unstable
        return options
