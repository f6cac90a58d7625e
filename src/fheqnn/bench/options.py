"""What a benchmark measures: the profiles and the options record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILES = {
    # Simulation only, small: runs in CI in a few minutes.
    "quick": {
        "datasets": ["iris"],
        "prune": [0.0, 0.5],
        "epochs": 40,
        "encrypt_rows": 0,
        "repeats": 0,
        "float_baseline": True,
        "throughput_rows": 0,
    },
    # Real encryption: run by hand on a quiet machine.
    "full": {
        "datasets": ["breast_cancer", "digits", "iris"],
        "prune": [0.0, 0.25, 0.5, 0.75],
        "epochs": 200,
        "encrypt_rows": 10,
        "repeats": 5,
        "float_baseline": True,
        "throughput_rows": 32,
    },
}


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
