"""The float baseline: an MLP of the classifier's shape without quantization or pruning."""

from __future__ import annotations

from typing import Any

import numpy as np


def float_mlp_accuracy(clf: Any, x_tr, y_tr, x_te, y_te, seed: int) -> float:
    """Test accuracy of a float MLP with the classifier's shape, trained by the same recipe
    (the estimators' skorch loop and hyper-parameters, on every training row for
    ``max_epochs``: no validation split)."""
    import torch
    from torch import nn

    from ..model.training_recipe import fit_with_skorch

    width = max(1, round(x_tr.shape[1] * clf.module__n_hidden_neurons_multiplier))
    classes = np.unique(y_tr)
    widths = [x_tr.shape[1]] + [width] * (clf.module__n_layers - 1) + [len(classes)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i in range(clf.module__n_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < clf.module__n_layers - 1:
                layers.append(clf.module__activation_function())
        model = nn.Sequential(*layers)
        targets = np.searchsorted(classes, y_tr).astype(np.int64)
        # Shuffling and input noise draw from torch's generator, seeded above.
        model = fit_with_skorch(
            model,
            np.asarray(x_tr, dtype=np.float32),
            targets,
            nn.CrossEntropyLoss(),
            clf.training_config(),
            seed=seed,
            validation_fraction=None,
            patience=0,
            stratify=True,
            callbacks=[],
        ).module
    with torch.no_grad():
        pred = model(torch.as_tensor(x_te, dtype=torch.float32)).argmax(1).numpy()
    return float(np.mean(classes[pred] == y_te))
