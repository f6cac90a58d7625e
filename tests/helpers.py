"""Shared test helpers."""

from __future__ import annotations

import numpy as np

from fheqnn import NeuralNetClassifier


def blobs(seed: int, n_rows: int, n_features: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes (centers drawn with scale 2) and their labels 0-2."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(3, n_features))
    y = rng.integers(0, 3, size=n_rows)
    return centers[y] + rng.normal(scale=noise, size=(n_rows, n_features)), y


def tiny_classifier(x: np.ndarray, y: np.ndarray, *, max_epochs: int) -> NeuralNetClassifier:
    """A tiny, low-precision trained network: cheap keys and lookups for encrypted tests
    (2 layers, width = features, 2-bit weights and activations, 5-bit accumulators)."""
    return NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=1,
        module__n_w_bits=2,
        module__n_a_bits=2,
        module__n_accum_bits=5,
        max_epochs=max_epochs,
        verbose=0,
        random_state=0,
    ).fit(x, y)
