"""``ConvNetClassifier``: the scikit-learn estimator around :class:`SparseQuantConvNetwork`.

It takes images, ``(n_rows, channels, height, width)`` arrays (or ``(n_rows, height, width)``
for one channel), and otherwise behaves as :class:`~fheqnn.model.estimators.NeuralNetClassifier`:
``fit``, ``predict(X, fhe=...)``, ``compile``, ``export_onnx``, ``clone`` and grid searches.
A compiled model takes the same images, or the same rows flattened (C order), through every
path an MLP's takes: ``FheModelClient``, ``FheModelServer``, the CLI and the HTTP service.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..contract import FeatureRange
from ..errors import InvalidInputError
from ..validation import check_features
from .estimators import NeuralNetClassifier
from .memory import (
    BYTES_PER_ACTIVATION,
    BYTES_PER_INPUT_VALUE,
    BYTES_PER_PARAMETER,
    FIXED_BYTES,
    check_bytes_fit,
)
from .qnn_module import MAX_BITWIDTH_BACKWARD_COMPATIBLE

__all__ = ["ConvNetClassifier"]


def _image_shape(x: np.ndarray) -> tuple[int, int, int]:
    """``(channels, height, width)`` of training images ``x``; flat rows are refused, since
    the estimator cannot know the image shape from them."""
    if x.ndim == 4:
        return tuple(int(n) for n in x.shape[1:])  # type: ignore[return-value]
    if x.ndim == 3:
        return (1, int(x.shape[1]), int(x.shape[2]))
    raise InvalidInputError(
        f"X must hold images, shape (n_rows, channels, height, width) or (n_rows, height, "
        f"width), got shape {x.shape}"
    )


class ConvNetClassifier(NeuralNetClassifier):
    """A sparse quantized convolutional classifier for images, trained with quantization-aware
    training; every filter's and neuron's accumulator provably fits ``module__n_accum_bits``.

    The network is :class:`~fheqnn.model.conv_module.SparseQuantConvNetwork` (its parameters
    are the ``module__*`` ones here; ``input_shape`` and ``n_outputs`` come from the data).
    The training parameters are those of :class:`NeuralNetClassifier`. Raw pixel values are
    fine: ``fit`` learns one mean and one scale per channel (not per pixel, so that a filter
    sees the same scale everywhere) and applies them before the network, in the clear.

    Attributes:
        input_shape_: ``(channels, height, width)`` of the images seen in ``fit``.
        classes_, module_, history_, best_epoch_, x_mean_, x_scale_, feature_range_,
        n_features_in_: as for :class:`NeuralNetClassifier`, per pixel of a flattened image
            (``n_features_in_`` is ``channels * height * width``).
    """

    def __init__(
        self,
        module__channels: tuple[int, ...] = (16, 64),
        module__kernel_size: int = 3,
        module__strides: tuple[int, ...] | None = None,
        module__hidden: tuple[int, ...] = (),
        module__n_w_bits: int = 3,
        module__n_a_bits: int = 3,
        module__n_accum_bits: int = MAX_BITWIDTH_BACKWARD_COMPATIBLE,
        module__n_prune_neurons_percentage: float = 0.0,
        module__activation_function: type = nn.ReLU,
        module__quant_narrow: bool = False,
        module__quant_signed: bool = True,
        module__weight_per_channel: bool = True,
        max_epochs: int = 120,
        lr: float = 0.01,
        batch_size: int = 64,
        weight_decay: float = 0.1,
        mask_updates: str = "dynamic",
        mask_freeze_fraction: float = 0.7,
        straight_through_masks: bool = True,
        select_after_freeze: bool = False,
        input_noise: float | str = "auto",
        validation_fraction: float | str | None = "auto",
        patience: int = 30,
        callbacks: list[Any] | None = None,
        verbose: int = 1,
        random_state: int | None = None,
    ) -> None:
        # scikit-learn's contract: store every parameter as given, check nothing here.
        params = dict(locals())
        del params["self"]
        params.pop("__class__", None)
        self.__dict__.update(params)

    #: ``input_noise="auto"``: none (not measured to help images yet).
    _auto_input_noise = 0.0

    # ------------------------------------------------------------------ images in
    def _validate_xy(self, X: Any, y: Any, *, y_numeric: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            images = np.asarray(X)
        except Exception as exc:  # ragged nested lists
            raise InvalidInputError(f"X cannot be read as an array: {exc}") from exc
        shape = _image_shape(images)
        flat = images.reshape(images.shape[0], int(np.prod(shape)))
        x, y_arr = super()._validate_xy(flat, y, y_numeric=y_numeric)
        self.input_shape_ = shape
        return x, y_arr

    def _validate_x(self, X: Any, *, reset: bool) -> np.ndarray:
        return super()._validate_x(self._feature_rows(X), reset=reset)

    def _feature_rows(self, X: Any, what: str = "X") -> np.ndarray:
        shape = self.input_shape_
        arr = np.asarray(X) if isinstance(X, list | tuple) else X
        if shape[0] == 1 and np.ndim(arr) == 3:  # one-channel images without their channel axis
            arr = np.asarray(arr)[:, None]
        return check_features(arr, int(np.prod(shape)), what=what, row_shape=shape)

    # ------------------------------------------------------------------ the network
    def _module_builder(
        self, x: np.ndarray, n_outputs: int, params: dict[str, Any], batch_size: int
    ) -> Any:
        from .conv_module import SparseQuantConvNetwork

        shape = self.input_shape_
        # Built once here (cheap: a few thousand weights), so that bad parameters are refused
        # before anything else happens; the training builds it again under its seed.
        with torch.random.fork_rng(devices=[]):  # fit leaves the global generator alone
            probe = SparseQuantConvNetwork(shape, n_outputs, **params)
        self._check_conv_memory(probe, len(x), batch_size)
        return lambda: SparseQuantConvNetwork(shape, n_outputs, **params)

    @staticmethod
    def _check_conv_memory(network: nn.Module, n_rows: int, batch_size: int) -> None:
        """Refuse a network whose training cannot fit in memory (the MLP's per-weight and
        per-activation figures, :mod:`fheqnn.model.memory`, applied to every value a forward
        pass keeps)."""
        parameters = sum(p.numel() for p in network.parameters())
        values = int(np.prod(network.input_shape))
        per_row = values + sum(network.hidden) + network.n_outputs
        per_row += sum(int(np.prod(shape)) for shape in network.conv_shapes)
        total = (
            parameters * BYTES_PER_PARAMETER
            + batch_size * per_row * BYTES_PER_ACTIVATION
            + n_rows * values * BYTES_PER_INPUT_VALUE
            + FIXED_BYTES
        )
        check_bytes_fit(
            total,
            f"{parameters:,} weights, {per_row:,} values per image",
            "fewer or narrower convolutions (module__channels), larger strides, or smaller images",
        )

    def _learn_input_scaling(self, x: np.ndarray) -> None:
        channels = self.input_shape_[0]
        per_channel = x.reshape(len(x), channels, -1)
        mean = per_channel.mean(axis=(0, 2))
        scale = per_channel.std(axis=(0, 2))
        scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
        positions = per_channel.shape[2]
        self.x_mean_ = np.repeat(mean, positions)
        self.x_scale_ = np.repeat(scale, positions)
        # A pixel that is always dark in training (a digit's border) is not "out of range"
        # when it lights up: the range warned about is each channel's, over all its pixels.
        lo = np.repeat(per_channel.min(axis=(0, 2)), positions)
        hi = np.repeat(per_channel.max(axis=(0, 2)), positions)
        self.feature_range_ = FeatureRange.of_rows(np.stack([lo, hi]))

    def export_onnx(self, path: Any = None) -> Any:
        """Export the trained network to QCDQ ONNX (opset 14, dynamic batch); its input is
        ``(batch, *input_shape_)``. ``path``: file to write (atomically); ``None`` only
        returns the model."""
        from .export import export_qcdq

        self._check_fitted()
        return export_qcdq(self.module_, torch.zeros(1, *self.input_shape_), path)
