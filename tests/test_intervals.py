"""Interval arithmetic: the proven bounds contain every sampled result, and are tight."""

from __future__ import annotations

import numpy as np
import pytest
from concrete import fhe
from hypothesis import given, settings
from hypothesis import strategies as st

from fheqnn.intervals import IntRange, bits_for_range, max_terms_within, quantizer_range

ints = st.integers(min_value=-(2**20), max_value=2**20)


@given(ints, ints)
def test_bits_for_range_matches_concrete(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    expected = fhe.Integer.that_can_represent(np.array([lo, hi], dtype=np.int64)).bit_width
    assert bits_for_range(lo, hi) == expected


@pytest.mark.parametrize(
    ("lo", "hi", "bits"),
    [
        (0, 0, 1),
        (0, 1, 1),
        (0, 255, 8),
        (0, 256, 9),
        (-1, 0, 1),
        (-128, 127, 8),
        (-129, 0, 9),
        (0, 127, 7),
        (-1, 128, 9),
    ],
)
def test_bits_for_range_known_values(lo: int, hi: int, bits: int) -> None:
    assert bits_for_range(lo, hi) == bits


def test_empty_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        IntRange(3, 2)


@pytest.mark.parametrize(
    ("bits", "signed", "narrow", "expected"),
    [
        (3, True, False, (-4, 3)),
        (3, True, True, (-3, 3)),
        (3, False, False, (0, 7)),
        (3, False, True, (0, 6)),
        (2, True, True, (-1, 1)),
    ],
)
def test_quantizer_range(bits: int, signed: bool, narrow: bool, expected: tuple[int, int]) -> None:
    r = quantizer_range(bits, signed, narrow)
    assert (r.lo, r.hi) == expected


@settings(max_examples=200)
@given(ints, ints, ints, ints, st.data())
def test_product_range_contains_samples(
    a: int, b: int, c: int, d: int, data: st.DataObject
) -> None:
    left, right = IntRange(min(a, b), max(a, b)), IntRange(min(c, d), max(c, d))
    x = data.draw(st.integers(left.lo, left.hi))
    y = data.draw(st.integers(right.lo, right.hi))
    prod = left * right
    assert prod.lo <= x * y <= prod.hi


@settings(max_examples=300)
@given(
    st.integers(-64, 0),
    st.integers(0, 64),
    st.integers(1, 20),
    st.data(),
)
def test_max_terms_within_is_exact(lo: int, hi: int, n_bits: int, data: st.DataObject) -> None:
    term = IntRange(lo, hi)
    k = max_terms_within(term, n_bits)
    if lo == 0 and hi == 0:
        assert k == 2**62
        return
    # k terms always fit, whatever their values ...
    values = data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)) if k <= 64 else []
    if values:
        assert bits_for_range(min(sum(values), 0), max(sum(values), 0)) <= n_bits
    assert term.scale(k).bits <= n_bits
    # ... and k + 1 terms at the same extreme do not.
    assert term.scale(k + 1).bits > n_bits
