"""Accumulator-aware weight quantization (brevitas' A2Q and A2Q+) instead of top-k pruning.

:class:`SparseQuantNeuralNetwork` keeps every neuron's accumulator within ``n_accum_bits`` by
keeping at most ``max_active_neurons()`` non-zero weights per neuron (top-k). A2Q (Colbert et
al., 2023) and A2Q+ (2024) bound the L1 norm of each neuron's integer weights instead, through a
learned, clamped weight norm, so a neuron may keep many small weights. Same layout, same
export, same compiler: the compiler proves the bound on the exported integers either way.
"""

from __future__ import annotations

import brevitas.nn as qnn
import torch
from brevitas.quant import (
    Int8AccumulatorAwareWeightQuant,
    Int8AccumulatorAwareZeroCenterWeightQuant,
)

from ..errors import InvalidParameterError
from .qnn_module import SparseQuantNeuralNetwork

__all__ = ["A2QNeuralNetwork", "A2QPlusNeuralNetwork"]


class A2QNeuralNetwork(SparseQuantNeuralNetwork):
    """:class:`SparseQuantNeuralNetwork` with A2Q weight quantizers and no pruning masks.

    Each neuron's integer weights have an L1 norm small enough that its accumulator fits in
    ``n_accum_bits`` for any input the (signed, ``n_a_bits``) input quantizer emits; weights are
    narrow-range and rounded towards zero. ``max_active_neurons()`` keeps its top-k meaning but
    does not limit this network. Structured pruning (``n_prune_neurons_percentage``) is not
    supported.
    """

    _weight_quant: type = Int8AccumulatorAwareWeightQuant

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.n_prune_neurons_percentage > 0:
            raise InvalidParameterError(
                f"{type(self).__name__} does not support n_prune_neurons_percentage "
                f"(got {self.n_prune_neurons_percentage}); use SparseQuantNeuralNetwork"
            )
        # The top-k masks installed by the base constructor are removed: the L1 bound of the
        # quantizer is what keeps the accumulators within n_accum_bits. (brevitas' A2Q proxy
        # also needs the layer's own weight parameter, which the mask hooks replace.)
        self.make_pruning_permanent()

    def _make_linear(self, in_features: int, out_features: int) -> qnn.QuantLinear:
        return qnn.QuantLinear(
            in_features,
            out_features,
            bias=True,
            weight_quant=self._weight_quant,
            weight_bit_width=self.n_w_bits,
            weight_accumulator_bit_width=self.n_accum_bits,
            bias_quant=None,
        )

    def enable_pruning(self) -> None:
        """Top-k pruning does not apply: the constructor's call installs masks, which the
        constructor then removes; later calls do nothing."""
        if not getattr(self, "_neurons_pruned", False):
            super().enable_pruning()

    @torch.no_grad()
    def integer_weights(self) -> list[torch.Tensor]:
        """The integer weights of each linear layer (int64).

        A2Q's scale depends on the bit width and sign of the layer's input, which brevitas takes
        from a cached input: one evaluation pass on a zero row provides it.
        """
        layers = self.linear_layers()
        for layer in layers:
            layer.weight_quant.cache_inference_quant_act = True
        training = self.training
        self.eval()
        try:
            self(torch.zeros(1, self.input_dim))
            return [layer.quant_weight().int().to(torch.int64) for layer in layers]
        finally:
            for layer in layers:
                layer.weight_quant.cache_inference_quant_act = False
            self.train(training)


class A2QPlusNeuralNetwork(A2QNeuralNetwork):
    """As :class:`A2QNeuralNetwork` with A2Q+ quantizers (zero-centred weights, a looser bound)."""

    _weight_quant = Int8AccumulatorAwareZeroCenterWeightQuant
