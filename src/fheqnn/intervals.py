"""Integer ranges and bit-widths: the arithmetic behind every accumulator guarantee.

A TFHE integer of ``n`` bits holds ``[0, 2**n - 1]`` when unsigned and ``[-2**(n-1), 2**(n-1) - 1]``
when signed; Concrete picks the signed form as soon as a value can be negative. The helpers here
follow that rule exactly, so a width proven here is the width Concrete will need.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IntRange:
    """A closed interval ``[lo, hi]`` of integers."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"empty integer range: lo={self.lo} > hi={self.hi}")

    @property
    def bits(self) -> int:
        """Bit-width of the smallest Concrete integer holding every value of the range."""
        return bits_for_range(self.lo, self.hi)

    def __mul__(self, other: IntRange) -> IntRange:
        corners = (self.lo * other.lo, self.lo * other.hi, self.hi * other.lo, self.hi * other.hi)
        return IntRange(min(corners), max(corners))

    def scale(self, count: int) -> IntRange:
        """Range of a sum of ``count`` terms each in this range (``count >= 0``)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return IntRange(min(0, self.lo) * count, max(0, self.hi) * count)

    def __str__(self) -> str:
        return f"[{self.lo}, {self.hi}]"


def bits_for_range(lo: int, hi: int) -> int:
    """Bit-width Concrete needs to hold every integer of ``[lo, hi]``.

    Unsigned when ``lo >= 0`` (``0`` needs one bit), two's complement signed otherwise.

    Args:
        lo: smallest value.
        hi: largest value.

    Returns:
        The width in bits.
    """
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"empty integer range: lo={lo} > hi={hi}")
    if lo >= 0:
        return max(1, hi.bit_length())
    # Signed n bits hold [-2**(n-1), 2**(n-1) - 1].
    return max((-lo - 1).bit_length(), max(hi, 0).bit_length()) + 1


def quantizer_range(bits: int, signed: bool, narrow: bool) -> IntRange:
    """Integers a uniform quantizer can emit.

    Signed: ``[-2**(b-1), 2**(b-1) - 1]``, narrow drops the lowest value. Unsigned:
    ``[0, 2**b - 1]``, narrow drops the highest value (the brevitas convention).
    """
    if bits < 1:
        raise ValueError(f"a quantizer needs at least 1 bit, got {bits}")
    if signed:
        return IntRange(-(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1)
    return IntRange(0, 2**bits - 1 - int(narrow))


def max_terms_within(term: IntRange, n_bits: int) -> int:
    """Largest ``k`` such that any sum of ``k`` terms from ``term`` fits in ``n_bits`` bits.

    The worst case of ``k`` terms is ``[k * min(term.lo, 0), k * max(term.hi, 0)]`` and it is
    reached (every term at the same extreme), so the answer is exact, not a heuristic.

    Returns:
        ``k >= 0``; 0 means that not even one term fits. A range of only zeros returns
        ``2**62`` (no limit).
    """
    if n_bits < 1:
        return 0
    neg, pos = -min(term.lo, 0), max(term.hi, 0)
    if neg == 0 and pos == 0:
        return 2**62
    if neg == 0:
        # Sums stay non-negative: unsigned, [0, 2**n - 1].
        return (2**n_bits - 1) // pos
    # Signed: [-2**(n-1), 2**(n-1) - 1].
    k = (2 ** (n_bits - 1)) // neg
    if pos > 0:
        k = min(k, (2 ** (n_bits - 1) - 1) // pos)
    return k
