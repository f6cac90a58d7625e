"""Sparse quantized convolutional network: the seed's network for images.

Convolutions (brevitas ``QuantConv2d``), optional hidden linear layers and a final linear
layer, every filter and neuron
pruned so that its integer accumulator provably fits ``n_accum_bits``: each filter keeps at
most :meth:`SparseQuantConvNetwork.max_active_weights` non-zero weights over its whole window
(input channels x kernel), the bound of the seed's MLP applied per filter and per layer.
Each output value of a convolution is one table lookup in FHE.
"""

from __future__ import annotations

from typing import Any

import brevitas.nn as qnn
import torch
from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
from torch import nn

from ..errors import InvalidParameterError
from ..intervals import IntRange, max_terms_within, quantizer_range
from ..validation import check_bool, check_int, check_number
from .qnn_module import MAX_BITWIDTH_BACKWARD_COMPATIBLE
from .sparse_base import SparseQuantBase

__all__ = ["SparseQuantConvNetwork"]

_MAX_QUANT_BITS = 16


def _check_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(input_shape) if isinstance(input_shape, list | tuple) else ()
    if len(shape) != 3:
        raise InvalidParameterError(
            f"input_shape must be (channels, height, width), got {input_shape!r}"
        )
    for name, value in zip(("channels", "height", "width"), shape, strict=True):
        check_int(f"input_shape {name}", value, 1)
    return shape  # type: ignore[return-value]


class SparseQuantConvNetwork(SparseQuantBase):
    """Sparse quantized convolutional network for ``(channels, height, width)`` inputs.

    Layout (``features``, an ``nn.Sequential``): for each convolution ``i`` a ``quant{i}``
    input quantizer (``n_a_bits``), a ``conv{i}`` quantized convolution (``n_w_bits``
    weights, per-filter scale, zero point 0, ``kernel_size`` square kernel, stride
    ``strides[i]``, padding ``kernel_size // 2``) and an ``act{i}`` activation; then
    for each hidden width ``j`` a ``quant_fc{j}`` quantizer, a ``fc{j}`` linear layer and an
    ``act_fc{j}`` activation, and a last quantizer, ``quant{len(channels)}``, before ``fc``,
    the linear layer to ``n_outputs``; ``flatten`` follows the first of those quantizers.
    ``forward`` returns raw outputs (logits).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_outputs: int,
        channels: tuple[int, ...] = (8, 16),
        kernel_size: int = 3,
        strides: tuple[int, ...] | None = None,
        hidden: tuple[int, ...] = (),
        n_w_bits: int = 3,
        n_a_bits: int = 3,
        n_accum_bits: int = MAX_BITWIDTH_BACKWARD_COMPATIBLE,
        n_prune_neurons_percentage: float = 0.0,
        activation_function: type = nn.ReLU,
        quant_narrow: bool = False,
        quant_signed: bool = True,
        weight_per_channel: bool = True,
    ) -> None:
        """Sparse quantized convolutional network constructor.

        Args:
            input_shape: ``(channels, height, width)`` of one input.
            n_outputs: Number of output classes.
            channels: Filters of each convolution, input to output (at least one).
            kernel_size: Side of every square kernel (odd: padding keeps the size).
            strides: Stride of each convolution (default 2 for each: every convolution
                halves the image, which keeps the number of lookups down).
            hidden: Widths of the hidden linear layers between the convolutions and ``fc``
                (default none). Each neuron, like each filter, keeps at most
                ``max_active_weights`` inputs, so a wide flattened image is read by more
                neurons than the classes alone.
            n_w_bits: Number of weight bits (signed; at least 2).
            n_a_bits: Number of activation and input bits.
            n_accum_bits: Maximal allowed bit-width of every accumulator.
            n_prune_neurons_percentage: Fraction in [0, 1) of each convolution's filters and
                of each hidden linear layer's neurons to prune (by weight norm) to speed up
                FHE inference.
            activation_function: The activation class, instantiated after each convolution.
            quant_narrow: Quantize with a narrow range.
            quant_signed: Quantize inputs and activations to signed integers.
            weight_per_channel: One weight scale per filter and per neuron (default), or one
                per layer. Concrete ML 1.9 cannot compile a convolution with per-filter scales
                (its ``QuantizedConv`` broadcasts them over the batch axis), so comparing the
                two systems on one module takes ``False``.

        Raises:
            InvalidParameterError: invalid values, or a budget too small for one weight.
        """
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        self.n_outputs = check_int("n_outputs", n_outputs, 1)
        channels = tuple(channels) if isinstance(channels, list | tuple) else ()
        if not channels:
            raise InvalidParameterError("channels must list at least one convolution's filters")
        self.channels = tuple(check_int("channels", c, 1) for c in channels)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        strides = (2,) * len(channels) if strides is None else tuple(strides)
        if len(strides) != len(channels):
            raise InvalidParameterError(
                f"strides must give one stride per convolution ({len(channels)}), got {strides}"
            )
        self.strides = tuple(check_int("strides", s, 1) for s in strides)
        if not isinstance(hidden, list | tuple):
            raise InvalidParameterError(
                f"hidden must be a tuple of layer widths (() for none), got {hidden!r}"
            )
        self.hidden = tuple(check_int("hidden", h, 1) for h in hidden)
        self.n_w_bits = check_int("n_w_bits", n_w_bits, 2, _MAX_QUANT_BITS)
        self.n_a_bits = check_int("n_a_bits", n_a_bits, 2 if quant_signed else 1, _MAX_QUANT_BITS)
        self.n_accum_bits = check_int("n_accum_bits", n_accum_bits, 1, 32)
        self.n_prune_neurons_percentage = check_number(
            "n_prune_neurons_percentage", n_prune_neurons_percentage, 0.0, 1.0, high_open=True
        )
        if not (
            isinstance(activation_function, type) and issubclass(activation_function, nn.Module)
        ):
            raise InvalidParameterError(
                f"activation_function must be a torch.nn.Module class, got {activation_function!r}"
            )
        self.activation_function = activation_function
        self._non_negative_activation = self._activation_is_non_negative()
        self.quant_narrow = check_bool("quant_narrow", quant_narrow)
        self.quant_signed = check_bool("quant_signed", quant_signed)
        self.weight_per_channel = check_bool("weight_per_channel", weight_per_channel)
        self.features = self._build_features()
        for index in range(len(self.masked_layers())):
            if self.max_active_weights(index) < 1:
                raise InvalidParameterError(
                    f"n_accum_bits={self.n_accum_bits} is too small: not even one weight of "
                    f"layer {index} fits ({self.n_w_bits}-bit weights, {self.n_a_bits}-bit "
                    "activations)"
                )
        self._init_pruning_state()
        self.set_calibration_steps(30)
        self._install_masks()
        self.update_pruning_masks()

    # ---------------------------------------------------------------- construction
    def _quantizer(self) -> nn.Module:
        return qnn.QuantIdentity(
            bit_width=self.n_a_bits,
            return_quant_tensor=True,
            narrow_range=self.quant_narrow,
            signed=self.quant_signed,
        )

    def _build_features(self) -> nn.Sequential:
        features = nn.Sequential()
        c_in, height, width = self.input_shape
        pad = self.kernel_size // 2
        #: (channels, height, width) of each convolution's output.
        self.conv_shapes: list[tuple[int, int, int]] = []
        for idx, (c_out, stride) in enumerate(zip(self.channels, self.strides, strict=True)):
            features.add_module(f"quant{idx}", self._quantizer())
            conv = qnn.QuantConv2d(
                c_in,
                c_out,
                self.kernel_size,
                stride=stride,
                padding=pad,
                bias=True,
                weight_quant=self._weight_quant(),
                weight_bit_width=self.n_w_bits,
                weight_narrow_range=self.quant_narrow,
                bias_quant=None,
            )
            features.add_module(f"conv{idx}", conv)
            features.add_module(f"act{idx}", self.activation_function())
            height = (height + 2 * pad - self.kernel_size) // stride + 1
            width = (width + 2 * pad - self.kernel_size) // stride + 1
            c_in = c_out
            self.conv_shapes.append((c_out, height, width))
        self.flat_shape = self.conv_shapes[-1]
        width_in = c_in * height * width
        # The images are flattened after their quantizer, so that the quantized tensor is what
        # the first linear layer reads (Concrete ML's importer needs it there).
        names = [f"quant_fc{idx}" for idx in range(len(self.hidden))]
        names.append(f"quant{len(self.channels)}")
        features.add_module(names[0], self._quantizer())
        features.add_module("flatten", nn.Flatten())
        for idx, width_out in enumerate(self.hidden):
            if idx:
                features.add_module(names[idx], self._quantizer())
            features.add_module(f"fc{idx}", self._linear(width_in, width_out))
            features.add_module(f"act_fc{idx}", self.activation_function())
            width_in = width_out
        if self.hidden:
            features.add_module(names[-1], self._quantizer())
        features.add_module("fc", self._linear(width_in, self.n_outputs))
        return features

    def _weight_quant(self) -> type:
        return Int8WeightPerChannelFloat if self.weight_per_channel else Int8WeightPerTensorFloat

    def _linear(self, n_in: int, n_out: int) -> nn.Module:
        return qnn.QuantLinear(
            n_in,
            n_out,
            bias=True,
            weight_quant=self._weight_quant(),
            weight_bit_width=self.n_w_bits,
            weight_narrow_range=self.quant_narrow,
            bias_quant=None,
        )

    # ---------------------------------------------------------------- the bound
    def masked_layers(self) -> list[nn.Module]:
        """The convolutions, the hidden linear layers and the final linear layer."""
        convs = [getattr(self.features, f"conv{i}") for i in range(len(self.channels))]
        hidden = [getattr(self.features, f"fc{j}") for j in range(len(self.hidden))]
        return [*convs, *hidden, self.features.fc]

    def layer_input_int_range(self, index: int) -> IntRange:
        """Integers that reach masked layer ``index``: its input quantizer's range, and after
        an activation that is never negative (a ReLU) only the quantizer's non-negative part,
        since brevitas' quantizers here have zero point 0. The compiler proves the same
        (``Layer.lookup_range``: the hull of the previous layer's table outputs), so a signed
        3-bit quantizer after a ReLU gives [0, 3], and each filter may keep more weights."""
        full = quantizer_range(self.n_a_bits, self.quant_signed, self.quant_narrow)
        if index == 0 or not self._non_negative_activation:
            return full
        return IntRange(max(full.lo, 0), full.hi)

    def _activation_is_non_negative(self) -> bool:
        probe = torch.linspace(-1e4, 1e4, 20001)
        with torch.no_grad():
            return bool(self.activation_function()(probe).min() >= 0)

    def max_active_weights(self, index: int) -> int:
        """Largest number of non-zero weights one filter (or neuron of ``fc``) of masked layer
        ``index`` may keep: the largest ``k`` for which ``k`` products of a weight and an input
        provably fit ``n_accum_bits`` (see ``SparseQuantNeuralNetwork.max_active_neurons``;
        computed per layer)."""
        weights = quantizer_range(self.n_w_bits, True, self.quant_narrow)
        return max_terms_within(weights * self.layer_input_int_range(index), self.n_accum_bits)

    def allowed_inputs(self, index: int, kept: torch.Tensor) -> torch.Tensor:
        """The input channels of kept filters (for the first linear layer: their flattened
        positions; for the next ones: the kept neurons)."""
        if index < len(self.channels):
            return kept[None, :, None, None]
        if index > len(self.channels):
            return kept[None, :]
        positions = self.flat_shape[1] * self.flat_shape[2]
        return kept.repeat_interleave(positions)[None, :]

    # ---------------------------------------------------------------- pruning
    def enable_pruning(self) -> None:
        """Install the masks again (after ``make_pruning_permanent``)."""
        if not self._pruning_enabled:
            self._install_masks()
            self.update_pruning_masks()

    @torch.no_grad()
    def make_pruning_permanent(self) -> None:
        """Fold the masks in force into the weights and stop masking. Pruned filters stay as
        all-zero filters: the compiler drops their channels (and their lookups)."""
        if not self._pruning_enabled:
            return
        for layer in self.masked_layers():
            layer._fheqnn_hook.remove()
            del layer._fheqnn_hook
            weight = layer.weight_orig.detach() * layer.weight_mask
            del layer.weight
            del layer.weight_orig
            del layer._buffers["weight_mask"]
            layer.__dict__.pop("_fheqnn_masked_weight", None)
            layer.weight = nn.Parameter(weight)
        self._pruning_enabled = False
        self._masks_frozen = True
        self._neurons_pruned = True

    # ---------------------------------------------------------------- pickling
    # As the MLP (SparseQuantBase._pickled): rebuilt from its constructor arguments.
    def __getstate__(self) -> dict[str, Any]:
        init_args = {
            "input_shape": self.input_shape,
            "n_outputs": self.n_outputs,
            "channels": self.channels,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "hidden": self.hidden,
            "n_w_bits": self.n_w_bits,
            "n_a_bits": self.n_a_bits,
            "n_accum_bits": self.n_accum_bits,
            "n_prune_neurons_percentage": self.n_prune_neurons_percentage,
            "activation_function": self.activation_function,
            "quant_narrow": self.quant_narrow,
            "quant_signed": self.quant_signed,
            "weight_per_channel": self.weight_per_channel,
        }
        return self._pickled(init_args)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["init_args"])  # type: ignore[misc]
        pruning = state["pruning"]
        if not pruning["enabled"]:
            self.make_pruning_permanent()
        self._restore_pickled(state, pruning)

    # ---------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(batch, n_outputs)`` of inputs ``(batch, *input_shape)`` (flat rows
        of ``prod(input_shape)`` values are reshaped)."""
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.input_shape)
        if self.training and self._pruning_enabled and not self._masks_frozen:
            self.update_pruning_masks()
        out = self.features(x)
        return out.value if hasattr(out, "value") else out

    @torch.no_grad()
    def integer_weights(self) -> list[torch.Tensor]:
        """The integer weights of each masked layer as the quantizer produces them (int64)."""
        if self._pruning_enabled:
            self._refresh_masked_weights()
        return [layer.quant_weight().int().to(torch.int64) for layer in self.masked_layers()]
