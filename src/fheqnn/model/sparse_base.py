"""What every sparse quantized network of fheqnn shares: pruning masks that keep each
neuron's (or filter's) integer accumulator within ``n_accum_bits`` from construction.

A subclass names its masked layers (:meth:`SparseQuantBase.masked_layers`: brevitas
``QuantLinear`` or ``QuantConv2d``), how many non-zero weights each output of a layer may keep
(:meth:`SparseQuantBase.max_active_weights`), and which inputs of a layer the outputs of the
previous one are (:meth:`SparseQuantBase.allowed_inputs`). The masks, the straight-through
gradients, freezing and the calibration of activation scales are here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidParameterError


class SparseQuantBase(nn.Module):
    """Pruning masks on the output rows of each masked layer (a neuron of a linear layer, a
    filter of a convolution): each row keeps its largest weights, at most
    :meth:`max_active_weights`, and ``n_prune_neurons_percentage`` of each hidden layer's rows
    (the smallest by weight norm) are removed. Until the masks are frozen, every training-mode
    forward pass re-chooses them from the current dense weights, so the masks follow the
    weights under any training loop."""

    n_prune_neurons_percentage: float

    def _init_pruning_state(self) -> None:
        self._pruning_enabled = False
        # Straight-through masks: while masks follow the weights, pruned weights still get a
        # gradient, so that they can grow back and be chosen again.
        self._ste_masks = True
        self._masks_frozen = False
        # Structured (whole-row) pruning is applied once; after make_pruning_permanent the
        # removed rows are gone and enabling pruning again must not remove more.
        self._neurons_pruned = False

    # ---------------------------------------------------------------- what subclasses say
    def masked_layers(self) -> list[nn.Module]:
        """The layers whose weights are masked, input to output."""
        raise NotImplementedError

    def max_active_weights(self, index: int) -> int:
        """Largest number of non-zero weights one output of masked layer ``index`` may keep."""
        raise NotImplementedError

    def allowed_inputs(self, index: int, kept: torch.Tensor) -> torch.Tensor:
        """Which weights of masked layer ``index`` read outputs of the previous layer that
        survive (``kept``: its rows), as a bool tensor that broadcasts to the weights."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    @property
    def pruning_enabled(self) -> bool:
        """Whether pruning masks are currently applied in ``forward`` (True from construction
        until ``make_pruning_permanent``)."""
        return self._pruning_enabled

    @property
    def pruning_masks_frozen(self) -> bool:
        """Whether the masks stay fixed in training-mode forward passes."""
        return self._masks_frozen

    def _install_masks(self) -> None:
        """Masks on every masked layer (all ones), applied before each of its forwards."""
        for layer in self.masked_layers():
            layer.register_buffer("weight_mask", torch.ones_like(layer.weight, dtype=torch.bool))
            # brevitas quantizes `weight_orig` when it exists and the quantizer is disabled, and
            # `weight` otherwise: we keep the dense values in `weight_orig` and the masked ones
            # in `weight`, recomputed before each forward.
            layer.weight_orig = layer.weight
            del layer._parameters["weight"]
            layer.weight = layer.weight_orig.detach()
            layer._fheqnn_hook = layer.register_forward_pre_hook(self._apply_mask_hook)
        self._pruning_enabled = True
        self._masks_frozen = False

    def freeze_pruning_masks(self, frozen: bool = True) -> None:
        """Stop (or, with ``frozen=False``, resume) re-choosing the masks in training passes.

        Frozen masks let the last epochs fine-tune a fixed topology; the weights then keep
        training under the masks in force, which ``make_pruning_permanent`` folds in.
        """
        self._masks_frozen = bool(frozen)
        if self._pruning_enabled:
            self._refresh_masked_weights()

    def set_straight_through_masks(self, enabled: bool) -> None:
        """Let gradients reach masked weights (straight-through), so that they can grow back.

        On by default; it only acts while the masks follow the weights (not frozen). ``forward``
        still uses only the masked weights; the gradient of each dense weight is the gradient of
        its masked copy, pruned or not.
        """
        self._ste_masks = bool(enabled)
        if self._pruning_enabled:
            self._refresh_masked_weights()

    def train(self, mode: bool = True) -> SparseQuantBase:
        """Set training mode; the masked weights are refreshed so that anything reading
        ``weight`` next (an exporter, ``quant_weight()``) sees the current values."""
        super().train(mode)
        if getattr(self, "_pruning_enabled", False):
            self._refresh_masked_weights()
        return self

    def _refresh_masked_weights(self) -> None:
        """Recompute each layer's masked ``weight`` now (the hook does it before each forward)."""
        for layer in self.masked_layers():
            self._apply_mask_hook(layer, ())

    def _apply_mask_hook(self, layer: nn.Module, _inputs: Any) -> None:
        mask = layer.weight_mask.to(layer.weight_orig.dtype)
        dense = layer.weight_orig
        if torch.is_grad_enabled() and dense.requires_grad:
            if self._ste_masks and not self._masks_frozen:
                layer.weight = dense + (dense * mask - dense).detach()
            else:
                layer.weight = dense * mask
            return
        # Without gradients the masked weights are written into one persistent tensor: brevitas'
        # exporter finds a layer's integer weights by the address of its weight tensor, which
        # must therefore not change between its preparation and its trace.
        with torch.no_grad():
            stable = layer.__dict__.get("_fheqnn_masked_weight")
            if stable is None or stable.shape != dense.shape:
                stable = torch.empty_like(dense, requires_grad=False)
                layer.__dict__["_fheqnn_masked_weight"] = stable
            stable.copy_(dense * mask)
        layer.weight = stable

    # ---------------------------------------------------------------- choosing the masks
    @torch.no_grad()
    def neuron_masks(self) -> list[torch.Tensor]:
        """Which outputs (neurons, filters) of each hidden layer survive structured pruning.

        While pruning is enabled: the masks in force (an output is kept iff its weight mask
        keeps at least one input, which every kept output does). Otherwise: the masks the
        current weights would give (see ``_choose_neuron_masks``).
        """
        if self._pruning_enabled:
            return [layer.weight_mask.flatten(1).any(dim=1) for layer in self.masked_layers()[:-1]]
        return self._choose_neuron_masks()

    @torch.no_grad()
    def _choose_neuron_masks(self) -> list[torch.Tensor]:
        """The ``round(n_prune_neurons_percentage * width)`` outputs of each hidden layer with
        the smallest L2 norm of incoming (dense) weights are removed, never all of them."""
        masks = []
        for layer in self.masked_layers()[:-1]:
            dense = (layer.weight_orig if self._pruning_enabled else layer.weight).flatten(1)
            width = dense.shape[0]
            fraction = 0.0 if self._neurons_pruned else self.n_prune_neurons_percentage
            n_removed = min(width - 1, round(fraction * width))
            keep = torch.ones(width, dtype=torch.bool)
            if n_removed > 0:
                norms = dense.norm(dim=1)
                keep[torch.topk(norms, n_removed, largest=False).indices] = False
            masks.append(keep)
        return masks

    @torch.no_grad()
    def update_pruning_masks(self) -> None:
        """Recompute every mask from the current dense weights (largest magnitudes survive).

        Training-mode forward passes call it while the masks are not frozen; it can also be
        called by hand (even on frozen masks).
        """
        if not self._pruning_enabled:
            raise InvalidParameterError(
                "pruning is not enabled (it was made permanent): call enable_pruning() first"
            )
        neurons = self._choose_neuron_masks()
        layers = self.masked_layers()
        for idx, layer in enumerate(layers):
            magnitude = layer.weight_orig.abs().clone()
            if idx > 0:
                # Inputs from pruned outputs are never selected.
                allowed = self.allowed_inputs(idx, neurons[idx - 1]).expand_as(magnitude)
                magnitude[~allowed] = -1.0
                n_allowed = int(allowed.flatten(1).sum(dim=1).min())
            else:
                n_allowed = magnitude[0].numel()
            flat = magnitude.flatten(1)
            keep = min(self.max_active_weights(idx), n_allowed)
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask.scatter_(1, torch.topk(flat, keep, dim=1).indices, True)
            if idx < len(layers) - 1:
                mask[~neurons[idx]] = False
            layer.weight_mask.copy_(mask.view_as(layer.weight_mask))
        self._refresh_masked_weights()

    def set_calibration_steps(self, steps: int) -> None:
        """Number of training forward passes during which activation scales follow statistics.

        brevitas' activation quantizers first collect running statistics of their inputs
        (300 passes by default), then learn the scale as a parameter. On small data sets 300
        passes can be most of the training, so the training loop shortens it.
        """
        if steps < 1:
            raise InvalidParameterError(f"calibration steps must be >= 1, got {steps}")
        for module in self.modules():
            stats_based = hasattr(module, "collect_stats_steps") and hasattr(module, "counter")
            if stats_based and module.counter <= module.collect_stats_steps:
                module.collect_stats_steps = int(steps)

    # ---------------------------------------------------------------- pickling
    # brevitas' quantizer injectors cannot be pickled: a network pickles as its constructor
    # arguments, its pruning state and its state dict, and subclasses rebuild it from them.
    def _pickled(self, init_args: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """The pickled form: ``init_args``, the pruning state, the state dict, the mode."""
        return {
            "init_args": init_args,
            **extra,
            "pruning": {
                "enabled": self._pruning_enabled,
                "frozen": self._masks_frozen,
                "straight_through": self._ste_masks,
                "neurons_pruned": self._neurons_pruned,
            },
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "training": self.training,
        }

    def _restore_pickled(self, state: dict[str, Any], pruning: dict[str, Any]) -> None:
        """Load a pickled state dict into the rebuilt network, then its flags and mode."""
        # brevitas leaves an activation scale out of the state dict until it has seen data; the
        # rebuilt quantizer is then in the same not-yet-calibrated state.
        result = self.load_state_dict(state["state_dict"], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("scaling_impl.value")]
        if missing or result.unexpected_keys:
            raise InvalidParameterError(
                f"pickled network does not match its architecture: missing {missing}, "
                f"unexpected {result.unexpected_keys}"
            )
        self._masks_frozen = bool(pruning["frozen"])
        self._ste_masks = bool(pruning.get("straight_through", True))
        self._neurons_pruned = bool(pruning["neurons_pruned"])
        self.train(state["training"])
