"""Shared test helpers."""

from __future__ import annotations

import numpy as np

from fheqnn import NeuralNetClassifier


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
