"""``ConvNetClassifier``: images in, scikit-learn's contract, and the same compile and run path
as the MLP's estimators."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone

from fheqnn import ConvNetClassifier, FheModelClient
from fheqnn.errors import InvalidInputError, InvalidParameterError, NotFittedError


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of raw 6x6 pixel values (0-255, unscaled), string labels: a bright left half
    ("left") or a bright right half ("right")."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(60, 25, size=(n, 1, 6, 6))
    x[y == 0, :, :, :3] += 120
    x[y == 1, :, :, 3:] += 120
    return np.clip(x, 0, 255), np.array(["left", "right"])[y]


def _estimator(**overrides: object) -> ConvNetClassifier:
    params = {
        "module__channels": (3, 4),
        "max_epochs": 25,
        "verbose": 0,
        "random_state": 0,
        **overrides,
    }
    return ConvNetClassifier(**params)


@pytest.fixture(scope="module")
def fitted() -> ConvNetClassifier:
    x, y = _images(160)
    return _estimator().fit(x, y)


def test_it_learns_raw_images_with_string_labels(fitted: ConvNetClassifier) -> None:
    x, y = _images(80, seed=1)
    assert fitted.input_shape_ == (1, 6, 6)
    assert fitted.n_features_in_ == 36
    assert list(fitted.classes_) == ["left", "right"]
    assert fitted.score(x, y) > 0.9
    # One scaling per channel, not per pixel: a filter sees the same scale everywhere.
    assert np.ptp(fitted.x_mean_) == 0 and np.ptp(fitted.x_scale_) == 0
    assert 100 < fitted.x_mean_[0] < 140
    module = fitted.module_
    for index, layer in enumerate(module.masked_layers()):
        nonzeros = int((layer.weight != 0).flatten(1).sum(dim=1).max())
        assert nonzeros <= module.max_active_weights(index)


def test_images_with_or_without_their_channel_axis_and_flat_rows_agree(
    fitted: ConvNetClassifier,
) -> None:
    x, _ = _images(10, seed=2)
    expected = fitted.predict_proba(x)
    np.testing.assert_allclose(fitted.predict_proba(x[:, 0]), expected)
    np.testing.assert_allclose(fitted.predict_proba(x.reshape(10, -1)), expected)


@pytest.mark.parametrize(
    ("shape", "match"),
    [((4, 1, 5, 6), r"rows of shape \(1, 5, 6\), expected \(1, 6, 6\)"), ((4, 35), "35 features")],
)
def test_images_of_another_shape_are_refused(
    fitted: ConvNetClassifier, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        fitted.predict(np.zeros(shape))


def test_flat_rows_cannot_train_it_since_their_image_shape_is_unknown() -> None:
    x, y = _images(20)
    with pytest.raises(InvalidInputError, match=r"X must hold images, shape \(n_rows, channels"):
        _estimator().fit(x.reshape(20, -1), y)


def test_a_refit_that_fails_leaves_the_estimator_as_it_was(fitted: ConvNetClassifier) -> None:
    est = clone(fitted).fit(*_images(60))
    before = est.predict_proba(_images(5)[0])
    x, _ = _images(30)
    with pytest.raises(InvalidInputError):
        est.fit(x[:, :, :4], np.array(["one"] * 30))  # one class only
    assert est.input_shape_ == (1, 6, 6)
    np.testing.assert_allclose(est.predict_proba(_images(5)[0]), before)


def test_parameters_clone_and_bad_parameters() -> None:
    est = _estimator(module__hidden=(8,))
    params = est.get_params()
    assert params["module__channels"] == (3, 4) and params["module__hidden"] == (8,)
    assert clone(est).get_params() == params
    with pytest.raises(InvalidParameterError, match="weight_quant"):
        est.set_params(weight_quant="a2q")
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((1, 1, 6, 6)))
    with pytest.raises(InvalidParameterError, match="strides"):
        _estimator(module__strides=(2,)).fit(*_images(20))


def test_hidden_linear_layers_keep_the_bound(fitted: ConvNetClassifier) -> None:
    est = _estimator(module__hidden=(6,), max_epochs=3).fit(*_images(60))
    module = est.module_
    assert [type(m).__name__ for m in module.masked_layers()] == [
        "QuantConv2d",
        "QuantConv2d",
        "QuantLinear",
        "QuantLinear",
    ]
    for index, layer in enumerate(module.masked_layers()):
        nonzeros = int((layer.weight != 0).flatten(1).sum(dim=1).max())
        assert nonzeros <= module.max_active_weights(index) == (7 if index == 0 else 10)


def test_it_pickles_and_predicts_the_same(fitted: ConvNetClassifier) -> None:
    x, _ = _images(12, seed=3)
    copy = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(copy.predict_proba(x), fitted.predict_proba(x))


@pytest.mark.slow
def test_it_compiles_bit_exact_and_serves_images(fitted: ConvNetClassifier, tmp_path) -> None:
    x_cal, y_cal = _images(120, seed=4)
    x, _ = _images(20, seed=5)
    est = pickle.loads(pickle.dumps(fitted))  # the shared fixture stays uncompiled
    est.compile(x_cal, y_cal, exact=True)
    model = est.fhe_model_
    for row in model.report.as_dicts():
        assert row["proven_bits"] <= 8
    integer = est.predict(x, fhe="disable")
    # The bit-exact profile: the simulated circuit answers as the integer program does.
    np.testing.assert_array_equal(est.predict(x, fhe="simulate"), integer)
    assert np.mean(integer == est.predict(x)) >= 0.9  # and as the network, nearly
    # The saved model takes the same images through the client/server path.
    model.save(tmp_path / "circuit")
    client = FheModelClient(tmp_path / "circuit")
    assert client.part.input_shape == (1, 6, 6)
    np.testing.assert_array_equal(client.quantize(x), model.quantize(x.reshape(20, -1)))
