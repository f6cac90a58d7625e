"""The same answer twice: the noise model, the stability criterion and the bit-exact profile."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from fheqnn import AccuracyLossError, CompileAccuracyWarning, CompileOptions, InvalidParameterError
from fheqnn.compiler.guard import GUARD_DRAWS, AccuracyGuard
from fheqnn.compiler.ir import CircuitNoise, round_lsbs
from fheqnn.compiler.lowering import lower_onnx
from fheqnn.compiler.noise import STABILITY_DRAWS, NoiseSpec, approx_spread
from fheqnn.compiler.options import EXACT_P_ERROR
from fheqnn.compiler.report import stability_text
from helpers import blobs, tiny_classifier


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    # Overlapping classes: rows near the boundary, where noise can flip a prediction.
    return blobs(2, 150, 5, 1.6)


@pytest.fixture(scope="module")
def clf(data):
    x, y = data
    return tiny_classifier(x, y, max_epochs=30)


def test_the_measured_spread_grows_with_the_error_probability() -> None:
    spreads = [approx_spread(p) for p in (2.0**-40, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)]
    assert spreads == sorted(spreads)
    assert 0.05 < spreads[0] < spreads[-1] < 0.5
    # Between two measured points the spread lies between them; beyond them it is held.
    assert approx_spread(1e-4) < approx_spread(3e-4) < approx_spread(1e-3)
    assert approx_spread(0.4) == approx_spread(1e-2)
    assert approx_spread(2.0**-60) == approx_spread(2.0**-40)
    assert approx_spread(None) > 0  # Concrete's default configuration


def test_noise_spec_of_an_error_probability() -> None:
    assert NoiseSpec.at(1e-3).lookup_error == 1e-3
    assert NoiseSpec.at(EXACT_P_ERROR).lookup_error == 0.0  # never drawn: no draws needed
    assert not NoiseSpec.at(EXACT_P_ERROR).random
    assert NoiseSpec.at(None).lookup_error == 1e-5  # Concrete's bound for the whole circuit


def test_bootstrap_errors_move_a_lookup_by_whole_steps() -> None:
    acc = np.arange(-64, 64) * 3
    exact = round_lsbs(acc, 2)
    quiet = CircuitNoise(np.random.default_rng(0), lookup_error=0.0)
    np.testing.assert_array_equal(quiet.round(acc, 2, exact=True), exact)
    always = CircuitNoise(np.random.default_rng(0), lookup_error=1.0)
    moved = always.round(acc, 2, exact=True)
    assert np.all(moved != exact) and np.all((moved - exact) % 4 == 0)
    assert {-4, 4} <= set((moved - exact).tolist())
    # Without rounding, a bootstrap error at a small error probability moves the input by one.
    some = CircuitNoise(np.random.default_rng(0), lookup_error=1e-2).round(
        np.zeros(20000, dtype=np.int64), 0, exact=True
    )
    assert set(some.tolist()) == {-1, 0, 1}
    # Exact rounding's extra bootstraps err too: a neuron errs more often than one lookup.
    rare = [
        np.mean(CircuitNoise(np.random.default_rng(1), lookup_error=0.01).round(
            np.zeros(20000, dtype=np.int64), lsbs, exact=True) != 0)
        for lsbs in (0, 4)
    ]  # fmt: skip
    assert rare[0] < 0.015 < 0.04 < rare[1]


def test_large_error_probabilities_move_lookups_several_steps() -> None:
    """The normal noise's tail: at 0.5 per lookup Concrete's simulation of a 7-bit lookup erred
    in 49 % of the lookups, by two steps or more in 4.4 % (benchmarks/bootstrap_error.py)."""
    zeros = np.zeros(200_000, dtype=np.int64)
    moved = CircuitNoise(np.random.default_rng(0), lookup_error=0.5).round(zeros, 0, exact=True)
    assert 0.48 < np.mean(moved != 0) < 0.52
    assert 0.035 < np.mean(np.abs(moved) >= 2) < 0.055
    assert np.mean(moved < 0) == pytest.approx(np.mean(moved > 0), abs=0.01)
    # At 1e-2 the tail is out of reach: every error is one step.
    small = CircuitNoise(np.random.default_rng(0), lookup_error=1e-2).round(zeros, 0, exact=True)
    assert np.abs(small).max() == 1


def test_bootstrap_errors_wrap_around_the_table() -> None:
    """An error past either end of a lookup's table reads its other end (Concrete's simulation:
    benchmarks/bootstrap_error.py), not a value beyond it."""
    shift, bits = 3, 3  # inputs acc + 3 in [0, 8)
    acc = np.full(100_000, -3)  # index 0, the bottom of the table
    moved = CircuitNoise(np.random.default_rng(0), lookup_error=0.5).round(
        acc, 0, exact=True, table=(shift, bits)
    )
    index = moved + shift
    assert index.min() >= 0 and index.max() < 1 << bits
    assert 0.2 < np.mean(index == 7) < 0.27  # one step down: wrapped to the top
    unwrapped = CircuitNoise(np.random.default_rng(0), lookup_error=0.5).round(acc, 0, True)
    np.testing.assert_array_equal(index == 7, unwrapped + shift == -1)


def test_noise_of_a_global_error_probability() -> None:
    """A run errs when any of its lookups does: a lookup errs at most global_p_error."""
    assert NoiseSpec.at(None, 0.5).lookup_error == 0.5
    assert NoiseSpec.at(1e-3, 1e-2).lookup_error == 1e-3
    assert NoiseSpec.at(1e-2, 1e-3).lookup_error == 1e-3
    assert NoiseSpec.at(None, 1e-3).approx_spread == approx_spread(1e-3)


def test_a_large_p_error_is_judged_and_not_kept_silently(data, clf, tmp_path) -> None:
    """p_error=0.5 (the largest accepted) is judged under its own noise: the guard warns, the
    report says it was not kept, and strict refuses."""
    from fheqnn import compile_onnx

    x, y = data
    onnx = clf.export_onnx()
    with pytest.warns(CompileAccuracyWarning, match=r"0\.5 per lookup.*smaller p_error"):
        model = compile_onnx(onnx, x, rounding="off", p_error=0.5, calibration_labels=y)
    stability = model.summary()["stability"]
    assert stability["guard_ok"] is False and stability["lookup_error"] == 0.5
    guard = model.summary()["accuracy_guard"]
    assert guard["ok"] is False and guard["thresholds"]["min_agreement"] == 0.99
    assert "NOT kept" in stability_text(stability)
    with pytest.raises(AccuracyLossError, match=r"0\.5 per lookup"):
        compile_onnx(onnx, x, rounding="off", p_error=0.5, calibration_labels=y, strict=True)


def test_a_large_global_p_error_is_judged(data, clf) -> None:
    """global_p_error alone was judged under Concrete's default noise (1e-5 per lookup)."""
    x, y = data
    options = CompileOptions(rounding="off", p_error=None, global_p_error=0.5, strict=True)
    with pytest.raises(AccuracyLossError, match=r"global_p_error=0\.5"):
        lower_onnx(clf.export_onnx(), x, options, calibration_labels=y)


def test_the_guard_counts_rows_whose_prediction_changes_between_draws(data, clf) -> None:
    x, _y = data
    with warnings.catch_warnings():  # a coarse rounding, on purpose: noise flips rows
        warnings.simplefilter("ignore", CompileAccuracyWarning)
        lowered = lower_onnx(
            clf.export_onnx(), x,
            CompileOptions(rounding=2, rounding_exact=False, p_error=1e-2, max_unstable=None),
        )  # fmt: skip
    noisy = lowered.rounding.unstable
    assert noisy is not None and noisy > 0
    # The same draws, so the same figure, every time: the guard is seeded.
    again = lowered.guard.score(lowered.program)
    assert again.unstable > 0 and lowered.guard.score(lowered.program) == again
    # A stability budget refuses what it allows no room for ...
    strict = lowered.guard.with_noise(lowered.guard.noise)
    strict.max_unstable = 0.0
    assert not strict.passes(again)
    strict.max_unstable = 1.0
    assert strict.passes(again) == lowered.guard.passes(again)
    # ... and the unrounded program under no noise never changes.
    quiet = AccuracyGuard(lowered.base_program, lowered.calibration_q, max_unstable=0.0)
    assert quiet.score(lowered.base_program).unstable == 0.0
    assert quiet.draws >= STABILITY_DRAWS


def test_auto_rounding_keeps_the_stability_budget(data, clf) -> None:
    x, y = data
    kept = []
    for p_error in (1e-2, 1e-3, 1e-4):
        with warnings.catch_warnings():  # no rounding may keep it at this error probability
            warnings.simplefilter("ignore", CompileAccuracyWarning)
            lowered = lower_onnx(
                clf.export_onnx(), x, CompileOptions(p_error=p_error), calibration_labels=y
            )
        choice = lowered.rounding
        assert lowered.options.max_unstable == 0.0 and choice.unstable is not None
        # A rounding that keeps the guard has no calibration row that changes between draws;
        # one that has is never passed off as keeping it.
        assert choice.unstable == 0.0 or not choice.guard_ok
        kept.append(choice.guard_ok)
    assert any(kept)


def test_the_exact_profile_refuses_what_contradicts_it() -> None:
    options = CompileOptions(exact=True)
    assert options.rounding_exact is True and options.p_error == EXACT_P_ERROR
    for bad, says in (
        ({"rounding_exact": False}, "rounding_exact=False contradicts it"),
        ({"p_error": 1e-3}, "at most 2\\*\\*-40, got p_error=0.001"),
        ({"p_error": None}, "got p_error=Concrete's default"),
        ({"global_p_error": 1e-5}, "give no global_p_error"),
    ):
        with pytest.raises(InvalidParameterError, match=says):
            CompileOptions(exact=True, **bad)
    with pytest.raises(InvalidParameterError, match="max_unstable must be"):
        CompileOptions(max_unstable=1.5)


def test_the_exact_profile_answers_as_the_interpreter_does(data, clf) -> None:
    x, y = data
    clf.compile(x, y, exact=True)
    model = clf.fhe_model_
    summary = model.summary()
    assert summary["profile"] == "exact" and summary["p_error"] == EXACT_P_ERROR
    assert summary["stability"]["bit_exact"] is True
    assert all(layer.rounding_exact for layer in model.program.layers)
    expected = model.run_integer(model.quantize(x), "disable")
    for _ in range(3):
        np.testing.assert_array_equal(model.run_integer(model.quantize(x), "simulate"), expected)
    assert "bit-exact" in stability_text(json.loads(json.dumps(summary))["stability"])


def test_the_default_profile_states_its_stability(data, clf) -> None:
    x, y = data
    with warnings.catch_warnings():  # a coarse rounding, on purpose
        warnings.simplefilter("ignore", CompileAccuracyWarning)
        clf.compile(x, y, p_error=1e-3, rounding=2, rounding_exact=False, max_unstable=None)
    stability = clf.fhe_model_.summary()["stability"]
    assert stability["bit_exact"] is False and stability["approximate_rounding"] is True
    # Without a budget the guard draws GUARD_DRAWS times, and says so.
    assert stability["unstable_calibration_rows"] >= 0 and stability["draws"] == GUARD_DRAWS
    text = stability_text(stability)
    assert "not bit-exact (approximate rounding and an error probability of 0.001" in text
    assert f"of {len(x)} calibration rows changed prediction over {GUARD_DRAWS} draws" in text
    assert "--exact" in text


def test_the_float_product_is_the_integer_product() -> None:
    """Accumulators are computed in float64 when that is provably exact, else in int64."""
    from fheqnn.compiler.ir import Layer
    from fheqnn.intervals import IntRange

    rng = np.random.default_rng(0)
    weight = rng.integers(-7, 8, size=(16, 40))
    zeros = np.zeros(16)
    layer = Layer("l", weight, IntRange(-(2**40), 2**40), zeros, zeros + 1, zeros, None, None)
    for high in (4, 2**20, 2**50):  # the last one is beyond float64's exact range (int64 path)
        q = rng.integers(-high, high, size=(50, 40))
        np.testing.assert_array_equal(layer.accumulate(q), q @ weight.T)


def test_a_rounding_is_reported_with_the_stability_of_what_is_compiled(data, clf) -> None:
    """The choice's unstable share is the one of the program it hands on (moved grids
    included), on every row and the guard's own draws: no second roll of the dice."""
    x, y = data
    for options in ({"p_error": 1e-3}, {"p_error": 1e-2, "rounding": 3}, {"p_error": 1e-4}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompileAccuracyWarning)
            lowered = lower_onnx(
                clf.export_onnx(), x, CompileOptions(**options), calibration_labels=y
            )
        again = lowered.guard.score(lowered.program)
        assert lowered.rounding.unstable == again.unstable, options
        assert lowered.rounding.guard_ok == (
            lowered.guard.passes(again) or (lowered.rounding.fallback is not None
            and lowered.rounding.guard_ok)
        )  # fmt: skip


def test_a_fallback_that_breaks_the_budget_is_not_silent(data, clf) -> None:
    x, y = data
    options = CompileOptions(p_error=1e-2, strict=True)
    with pytest.raises(AccuracyLossError, match="max_unstable"):
        lower_onnx(clf.export_onnx(), x, options, calibration_labels=y)


def test_rounding_off_keeps_the_stability_budget_in_the_p_error_search(data, clf) -> None:
    x, y = data
    clf.compile(x, y, rounding="off")
    model = clf.fhe_model_
    curve = model.stats.p_error_curve
    for entry in curve:
        assert entry["guard_ok"] == (entry["unstable"] == 0.0), entry
    assert any(e["guard_ok"] for e in curve)
    assert model.stats.rounding.guard_ok and model.stats.rounding.unstable == 0.0
