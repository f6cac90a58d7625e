"""The training hyper-parameters, and the pieces of the schedule the training recipe uses.

The estimators (and the benchmark's float baseline) train with skorch (``training_recipe.py``)
from this ``TrainingConfig``. Quantization-aware training with the pruning masks active: the
forward pass uses the quantized, masked weights, so the network that is trained is the one that
will run on integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


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
            only (the skorch recipe, ``training_recipe.py``); validation and
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
