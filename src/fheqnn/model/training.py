"""The training hyper-parameters, and a plain training loop (the benchmarks' float baselines).

The estimators train with skorch (``training_recipe.py``) from the same ``TrainingConfig``.
Quantization-aware training with the pruning masks active: the forward pass uses the quantized,
masked weights, so the network that is trained is the one that will run on integers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .qnn_module import SparseQuantNeuralNetwork

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """How to train.

    Attributes:
        max_epochs: passes over the training data.
        lr: peak learning rate of AdamW (linear warm-up over 10 % of the steps, then cosine
            decay).
        batch_size: rows per optimizer step.
        weight_decay: AdamW decoupled weight decay.
        mask_updates: ``"dynamic"`` recomputes the pruning masks from the dense weights after every
            optimizer step until ``mask_freeze_fraction`` of the epochs, ``"fixed"`` computes them
            once from the initial weights (the reference implementation's behaviour).
        mask_freeze_fraction: fraction of the epochs after which dynamic masks stop changing, so
            the last epochs fine-tune a fixed topology.
        straight_through_masks: while masks change, give pruned weights the gradient of their
            masked copy so that they can grow back.
        select_after_freeze: early stopping (and the choice of the epoch kept) only looks at
            epochs after the masks froze, so the kept network has its final topology.
        input_noise: standard deviation of the Gaussian noise added to the (standardized)
            inputs of every training batch, a fresh draw each step; 0 adds none. A regularizer:
            the network cannot rely on a feature's exact value, and on small tables it generalizes
            better (measured in ``benchmarks/results/accuracy.md``). Drawn in training steps
            only (the estimators' skorch recipe and :func:`train_module`); validation and
            scoring see the rows as they are.
        verbose: show a progress bar (stderr) when true.
    """

    max_epochs: int = 200
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.1
    mask_updates: str = "dynamic"
    mask_freeze_fraction: float = 0.7
    straight_through_masks: bool = True
    select_after_freeze: bool = False
    input_noise: float = 0.0
    verbose: bool = False


def add_input_noise(
    x: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std`` (a new tensor; ``x`` is kept)."""
    if not std:
        return x
    return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _warmup_cosine(total_steps: int, warmup_fraction: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first steps, then cosine decay to ~0."""
    warmup = max(1, math.ceil(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_module(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainingConfig,
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """Train ``module`` in place on ``(x, y)``; return the per-epoch history.

    Pruning is applied when ``module`` is a :class:`SparseQuantNeuralNetwork`: enabled before the
    first step, masks refreshed as ``config`` says, made permanent at the end (pruned neurons are
    removed). Any other module is trained as is (the float baselines).

    Args:
        module: the network.
        x: inputs, float32, shape ``(n_rows, n_features)``.
        y: targets, class indices (int64) or values (float32).
        loss_fn: maps ``(outputs, y_batch)`` to a scalar loss.
        config: hyper-parameters.
        generator: seeded generator used for shuffling.

    Returns:
        One dict per epoch with ``epoch`` and ``train_loss`` (mean over batches).
    """
    sparse = isinstance(module, SparseQuantNeuralNetwork)
    dynamic = config.mask_updates == "dynamic"
    if sparse:
        module.enable_pruning()
        module.set_straight_through_masks(dynamic and config.straight_through_masks)
    module.train()
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    n_rows = x.shape[0]
    steps_per_epoch = max(1, math.ceil(n_rows / config.batch_size))
    total_steps = config.max_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total_steps))
    if sparse:
        # Activation scales: statistics for the first tenth of training at most, then learned.
        module.set_calibration_steps(min(300, max(1, total_steps // 10)))
    freeze_epoch = math.ceil(config.mask_freeze_fraction * config.max_epochs)
    history: list[dict[str, float]] = []
    epochs = tqdm(
        range(config.max_epochs),
        desc="training",
        unit="epoch",
        disable=not config.verbose,
        leave=False,
    )
    for epoch in epochs:
        if sparse and dynamic and epoch == freeze_epoch:
            module.set_straight_through_masks(False)
        order = torch.randperm(n_rows, generator=generator)
        losses = []
        for start in range(0, n_rows, config.batch_size):
            idx = order[start : start + config.batch_size]
            inputs = add_input_noise(x[idx], config.input_noise, generator)
            loss = loss_fn(module(inputs), y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}: loss is {loss.item()}; lower lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if sparse and dynamic and epoch < freeze_epoch:
                module.update_pruning_masks()
            losses.append(loss.item())
        mean_loss = float(np.mean(losses))
        history.append({"epoch": epoch + 1, "train_loss": mean_loss})
        epochs.set_postfix(loss=f"{mean_loss:.4f}")
    if sparse:
        module.make_pruning_permanent()
    module.eval()
    logger.info("trained %d epochs, final loss %.4f", config.max_epochs, history[-1]["train_loss"])
    return history
