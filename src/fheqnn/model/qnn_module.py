"""Sparse Quantized Neural Network torch module.

An MLP built from brevitas quantized layers whose integer accumulators provably fit in a given
number of bits, which is what lets each hidden neuron become one table lookup in FHE.
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
from .memory import check_training_fits, hidden_width
from .sparse_base import SparseQuantBase

__all__ = ["MAX_BITWIDTH_BACKWARD_COMPATIBLE", "SparseQuantNeuralNetwork"]

#: Default accumulator width (bits): the widest table lookup input that older Concrete releases
#: accepted, kept as the default ``n_accum_bits``.
MAX_BITWIDTH_BACKWARD_COMPATIBLE = 8

# Activations whose output is never negative: after them a signed quantizer only emits the
# non-negative half of its integers, which the accumulator bound may rely on.
_NON_NEGATIVE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Softplus,
)

#: Quantize weights with one scale per output neuron (True) or one per layer (False). Each neuron
#: is its own table lookup in FHE, so a per-neuron scale costs nothing at inference.
PER_CHANNEL_WEIGHTS = True

#: Training forward passes during which activation quantizers calibrate their scale from running
#: statistics before learning it (brevitas' default is 300, most of a short loop on tabular data:
#: a plain 120-step Adam loop on breast cancer reached 0.90-0.93 test accuracy with 300 or 10
#: steps and 0.94-0.95 with 30). Loops of other lengths may call ``set_calibration_steps``.
DEFAULT_CALIBRATION_STEPS = 30

_MAX_QUANT_BITS = 16
_MAX_ACCUM_BITS = 32


def _check_arguments(
    input_dim: int,
    n_layers: int,
    n_outputs: int,
    n_hidden_neurons_multiplier: float,
    n_w_bits: int,
    n_a_bits: int,
    n_accum_bits: int,
    n_prune_neurons_percentage: float,
    activation_function: Any,
    quant_narrow: bool,
    quant_signed: bool,
) -> None:
    """Refuse a :class:`SparseQuantNeuralNetwork` argument of the wrong type or range."""
    check_int("input_dim", input_dim, 1)
    check_int("n_layers", n_layers, 1)
    check_int("n_outputs", n_outputs, 1)
    check_number("n_hidden_neurons_multiplier", n_hidden_neurons_multiplier, 0, low_open=True)
    # A signed 1-bit weight can only be 0 or -1 (and only 0 when narrow): no usable magnitude.
    check_int("n_w_bits", n_w_bits, 2, _MAX_QUANT_BITS)
    check_int("n_a_bits", n_a_bits, 2 if quant_signed else 1, _MAX_QUANT_BITS)
    check_int("n_accum_bits", n_accum_bits, 1, _MAX_ACCUM_BITS)
    check_number("n_prune_neurons_percentage", n_prune_neurons_percentage, 0.0, 1.0, high_open=True)
    if not (isinstance(activation_function, type) and issubclass(activation_function, nn.Module)):
        raise InvalidParameterError(
            "activation_function must be a torch.nn.Module class such as torch.nn.ReLU, "
            f"got {activation_function!r}"
        )
    check_bool("quant_narrow", quant_narrow)
    check_bool("quant_signed", quant_signed)


class SparseQuantNeuralNetwork(SparseQuantBase):
    """Sparse Quantized Neural Network.

    This class implements an MLP that is compatible with FHE constraints. The weights and
    activations are quantized to low bit-width and pruning is used to ensure accumulators do not
    surpass a user-provided accumulator bit-width. The number of classes and number of layers are
    specified by the user, as well as the breadth of the network.

    Layout (``features``, an ``nn.Sequential``): for each layer ``i`` a ``quant{i}`` input
    quantizer (``n_a_bits``), a ``fc{i}`` quantized linear layer (``n_w_bits`` weights, zero point
    0, so that a pruned weight is exactly the integer 0) and, except after the last layer, an
    ``act{i}`` activation. ``forward`` returns raw outputs (logits or regression values).
    """

    def __init__(
        self,
        input_dim: int,
        n_layers: int,
        n_outputs: int,
        n_hidden_neurons_multiplier: int = 4,
        n_w_bits: int = 3,
        n_a_bits: int = 3,
        n_accum_bits: int = MAX_BITWIDTH_BACKWARD_COMPATIBLE,
        n_prune_neurons_percentage: float = 0.0,
        activation_function: type = nn.ReLU,
        quant_narrow: bool = False,
        quant_signed: bool = True,
    ) -> None:
        """Sparse Quantized Neural Network constructor.

        Args:
            input_dim: Number of dimensions of the input data.
            n_layers: Number of linear layers for this network.
            n_outputs: Number of output classes or regression targets.
            n_hidden_neurons_multiplier: Hidden width is ``input_dim`` times this value. Pruning
                keeps accumulators within ``n_accum_bits``, so not every weight stays active.
            n_w_bits: Number of weight bits (signed; at least 2).
            n_a_bits: Number of activation and input bits.
            n_accum_bits: Maximal allowed bit-width of intermediate accumulators.
            n_prune_neurons_percentage: Fraction in [0, 1) of each hidden layer's neurons to prune
                (structured, by weight norm) to speed up FHE inference.
            activation_function: The activation class (e.g. ``torch.nn.ReLU``), instantiated
                without arguments after every layer but the last.
            quant_narrow: Whether to quantize with a narrow range (e.g. 2-bit signed uses
                [-1, 0, 1] instead of [-2, -1, 0, 1]).
            quant_signed: Whether inputs and activations are quantized to signed integers.

        Raises:
            ValueError: If the parameters have invalid values or the computed accumulator
                bit-width is zero.
            InsufficientMemoryError: training a network this wide would not fit in the memory
                available (:func:`fheqnn.model.memory.check_training_fits`), refused before any
                layer is allocated.
        """
        super().__init__()
        shape = (input_dim, n_layers, n_outputs, n_hidden_neurons_multiplier)
        bits = (n_w_bits, n_a_bits, n_accum_bits)
        _check_arguments(*shape, *bits, n_prune_neurons_percentage, activation_function,
                         quant_narrow, quant_signed)  # fmt: skip
        # Before any layer exists (the weights grow with the square of the features).
        check_training_fits(input_dim, n_layers, n_outputs, n_hidden_neurons_multiplier)

        self.input_dim = input_dim
        self.n_layers = n_layers
        self.n_outputs = n_outputs
        self.n_hidden_neurons_multiplier = n_hidden_neurons_multiplier
        self.n_w_bits = n_w_bits
        self.n_a_bits = n_a_bits
        self.n_accum_bits = n_accum_bits
        self.n_prune_neurons_percentage = float(n_prune_neurons_percentage)
        self.activation_function = activation_function
        self.quant_narrow = quant_narrow
        self.quant_signed = quant_signed

        self.features = self._build_features()
        self._check_budget()
        self._init_pruning_state()
        self.set_calibration_steps(DEFAULT_CALIBRATION_STEPS)
        # As in the reference: whatever loop trains this module, it trains within the budget.
        self.enable_pruning()

    # ---------------------------------------------------------------- construction helpers
    def _build_features(self) -> nn.Sequential:
        """The layers (``quant{i}``, ``fc{i}``, ``act{i}``) of the shape the attributes say."""
        hidden = hidden_width(self.input_dim, self.n_hidden_neurons_multiplier)
        widths = [self.input_dim] + [hidden] * (self.n_layers - 1) + [self.n_outputs]
        features = nn.Sequential()
        for idx in range(self.n_layers):
            features.add_module(f"quant{idx}", self._make_input_quantizer())
            features.add_module(f"fc{idx}", self._make_linear(widths[idx], widths[idx + 1]))
            if idx < self.n_layers - 1:
                features.add_module(f"act{idx}", self.activation_function())
        return features

    def _check_budget(self) -> None:
        """Refuse an accumulator budget too small for even one active weight per neuron."""
        if self.max_active_neurons() == 0:
            raise InvalidParameterError(
                f"n_accum_bits={self.n_accum_bits} is too small: with {self.n_w_bits}-bit "
                f"weights and {self.n_a_bits}-bit activations not even one active weight per "
                f"neuron fits (one product needs {self._worst_term_range().bits} bits); raise "
                "n_accum_bits or lower n_w_bits / n_a_bits"
            )

    def _make_input_quantizer(self) -> nn.Module:
        return qnn.QuantIdentity(
            bit_width=self.n_a_bits,
            return_quant_tensor=True,
            narrow_range=self.quant_narrow,
            signed=self.quant_signed,
        )

    def _make_linear(self, in_features: int, out_features: int) -> qnn.QuantLinear:
        # brevitas' weight quantizers are symmetric (zero point 0) with a max-abs scale.
        weight_quant = (
            Int8WeightPerChannelFloat if PER_CHANNEL_WEIGHTS else Int8WeightPerTensorFloat
        )
        return qnn.QuantLinear(
            in_features,
            out_features,
            bias=True,
            weight_quant=weight_quant,
            weight_bit_width=self.n_w_bits,
            weight_narrow_range=self.quant_narrow,
            bias_quant=None,
        )

    # ---------------------------------------------------------------- layer views
    def linear_layers(self) -> list[qnn.QuantLinear]:
        """The ``n_layers`` quantized linear layers, input to output."""
        return [getattr(self.features, f"fc{i}") for i in range(self.n_layers)]

    def hidden_widths(self) -> list[int]:
        """Number of neurons of each hidden layer (shrinks after ``make_pruning_permanent``)."""
        return [layer.out_features for layer in self.linear_layers()[:-1]]

    # ---------------------------------------------------------------- accumulator bound
    def weight_int_range(self) -> IntRange:
        """Integers the weight quantizer can produce (signed, ``n_w_bits``, narrow if asked).

        With ``quant_narrow=False`` brevitas scales by ``max|w| / 2**(n_w_bits-1)``, so the most
        negative value ``-2**(n_w_bits-1)`` does occur; narrow range gives a symmetric interval.
        """
        return quantizer_range(self.n_w_bits, True, self.quant_narrow)

    def layer_input_int_range(self, layer_index: int) -> IntRange:
        """Integers that reach linear layer ``layer_index`` from its input quantizer."""
        full = quantizer_range(self.n_a_bits, self.quant_signed, self.quant_narrow)
        if layer_index > 0 and issubclass(self.activation_function, _NON_NEGATIVE_ACTIVATIONS):
            # Quantizing a value >= 0 with zero point 0 never gives a negative integer.
            return IntRange(max(full.lo, 0), full.hi)
        return full

    def _worst_term_range(self) -> IntRange:
        terms = [
            self.weight_int_range() * self.layer_input_int_range(i) for i in range(self.n_layers)
        ]
        return IntRange(min(t.lo for t in terms), max(t.hi for t in terms))

    def max_active_neurons(self) -> int:
        """Compute the maximum number of active (non-zero weight) neurons.

        Despite the seed's name, this counts **weights per neuron**, not neurons: it is the
        largest number of non-zero integer weights (active inputs) that any single neuron may
        keep: the largest ``k`` for which the worst-case integer accumulator of every neuron, in
        every layer, provably fits in ``n_accum_bits``.
        With ``W`` the integers of the ``n_w_bits`` signed weight quantizer and ``A_l``
        the integers reaching layer ``l`` (the quantizer's range; only its non-negative half after a
        non-negative activation such as ReLU), each product lies in ``P_l = W * A_l = [p_l, q_l]``
        and ``k`` products in ``[k * p_l, k * q_l]``. That sum fits in ``n`` signed bits iff
        ``k * |p_l| <= 2**(n-1)`` and ``k * q_l <= 2**(n-1) - 1`` (unsigned when ``p_l = 0``:
        ``k * q_l <= 2**n - 1``). So

            k = min_l min(floor(2**(n-1) / |p_l|), floor((2**(n-1) - 1) / q_l)).

        The bound is reached (all weights and inputs at the same extreme), so it is exact, and it
        holds for every single neuron, not on average over a layer. Example: 3-bit weights and
        activations, signed, not narrow, 8-bit accumulators: inputs and weights in [-4, 3] give
        products in [-12, 16], so k = min(128 // 12, 127 // 16) = 7 (10 with narrow range).

        Returns:
            int: The maximum number of active neurons.
        """
        bounds = [
            max_terms_within(
                self.weight_int_range() * self.layer_input_int_range(i), self.n_accum_bits
            )
            for i in range(self.n_layers)
        ]
        return min(bounds)

    # ---------------------------------------------------------------- pruning
    def masked_layers(self) -> list[nn.Module]:
        """The linear layers (every one is masked)."""
        return list(self.linear_layers())

    def max_active_weights(self, index: int) -> int:
        """``max_active_neurons()``, the same for every layer (the seed's bound)."""
        return self.max_active_neurons()

    def allowed_inputs(self, index: int, kept: torch.Tensor) -> torch.Tensor:
        """The columns of the previous layer's kept neurons."""
        return kept[None, :]

    def enable_pruning(self) -> None:
        """Enable pruning in the network. Pruning must be made permanent to recover pruned weights.

        The constructor already calls it; calling it again while pruning is enabled changes
        nothing. It installs a mask on each linear layer so that every neuron keeps at most
        ``max_active_neurons()`` non-zero weights (the largest in magnitude), and removes
        ``n_prune_neurons_percentage`` of each hidden layer's neurons (the smallest by weight
        norm). Until the masks are frozen (``freeze_pruning_masks`` or
        ``make_pruning_permanent``), every training-mode forward pass re-chooses them from the
        current dense weights (one top-k per layer), so the masks follow the weights under any
        training loop; evaluation-mode passes keep them.

        Raises:
            ValueError: If the quantization parameters are invalid.
        """
        if self.max_active_neurons() < 1:
            raise InvalidParameterError(
                f"n_accum_bits={self.n_accum_bits} leaves no active weight per neuron"
            )
        if self._pruning_enabled:
            return
        self._install_masks()
        self.update_pruning_masks()

    @torch.no_grad()
    def make_pruning_permanent(self) -> None:
        """Make the learned pruning permanent in the network.

        The masks in force are frozen and folded into the weights, and the neurons removed by
        structured pruning are physically deleted: their layer gets smaller and the next layer
        loses the matching inputs, which leaves the network's outputs unchanged and saves their
        table lookups in FHE. A no-op when pruning is not enabled (already permanent).
        """
        if not self._pruning_enabled:
            return
        neurons = self.neuron_masks()
        layers = self.linear_layers()
        for idx, layer in enumerate(layers):
            layer._fheqnn_hook.remove()
            del layer._fheqnn_hook
            weight = layer.weight_orig.detach() * layer.weight_mask
            bias = layer.bias.detach()
            rows = (
                neurons[idx]
                if idx < len(layers) - 1
                else torch.ones(weight.shape[0], dtype=torch.bool)
            )
            cols = neurons[idx - 1] if idx > 0 else torch.ones(weight.shape[1], dtype=torch.bool)
            new = self._make_linear(int(cols.sum()), int(rows.sum()))
            new.weight.copy_(weight[rows][:, cols])
            new.bias.copy_(bias[rows])
            new.train(layer.training)
            setattr(self.features, f"fc{idx}", new)
        self._pruning_enabled = False
        self._masks_frozen = True
        self._neurons_pruned = True

    # ---------------------------------------------------------------- pickling
    # A network pickles as its constructor arguments, its layer widths, its pruning state and
    # its state dict (dense weights and masks while pruning is enabled), and is rebuilt from
    # them (SparseQuantBase._pickled). A network pickled mid-training comes back with the same
    # masks and keeps training within the budget.
    def __getstate__(self) -> dict[str, Any]:
        init_args = {
            "input_dim": self.input_dim,
            "n_layers": self.n_layers,
            "n_outputs": self.n_outputs,
            "n_hidden_neurons_multiplier": self.n_hidden_neurons_multiplier,
            "n_w_bits": self.n_w_bits,
            "n_a_bits": self.n_a_bits,
            "n_accum_bits": self.n_accum_bits,
            "n_prune_neurons_percentage": self.n_prune_neurons_percentage,
            "activation_function": self.activation_function,
            "quant_narrow": self.quant_narrow,
            "quant_signed": self.quant_signed,
        }
        return self._pickled(init_args, hidden_widths=self.hidden_widths())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["init_args"])  # type: ignore[misc]
        pruning = state.get("pruning", {"enabled": False, "frozen": True, "neurons_pruned": True})
        # Plain layers of the pickled widths first, then the masks if they were on.
        for layer in self.linear_layers():
            if hasattr(layer, "_fheqnn_hook"):
                layer._fheqnn_hook.remove()
        widths = [self.input_dim, *state["hidden_widths"], self.n_outputs]
        for idx in range(self.n_layers):
            setattr(self.features, f"fc{idx}", self._make_linear(widths[idx], widths[idx + 1]))
        self._pruning_enabled = False
        self._neurons_pruned = bool(pruning["neurons_pruned"])
        if pruning["enabled"]:
            self.enable_pruning()
        self._restore_pickled(state, pruning)

    # ---------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass.

        Args:
            x (torch.Tensor): network input, shape ``(batch, input_dim)``.

        Returns:
            x (torch.Tensor): network prediction, shape ``(batch, n_outputs)`` (raw, float).
        """
        if self.training and self._pruning_enabled and not self._masks_frozen:
            # Masks follow the weights: one top-k per layer, cheap next to the quantized matmuls.
            self.update_pruning_masks()
        out = self.features(x)
        # The last layer returns a plain tensor; unwrap defensively if brevitas returns more.
        return out.value if hasattr(out, "value") else out

    @torch.no_grad()
    def integer_weights(self) -> list[torch.Tensor]:
        """The integer weights of each linear layer as the quantizer produces them (int64)."""
        if self._pruning_enabled:
            self._refresh_masked_weights()
        return [layer.quant_weight().int().to(torch.int64) for layer in self.linear_layers()]
