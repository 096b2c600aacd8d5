"""Frozen linear layers on oneDNN's pre-packed weight layout, for CPU training of a LoRA adapter.

MKL's plain sgemm reads a weight laid out row-major on every call; for the skinny matrices of decoding (8 to 16
rows) that runs well below what the memory can give. oneDNN can reorder a weight once into its blocked layout,
after which the same products run faster, most of all when decoding (benchmarks/README.md has the figures). The base weights never change while an adapter trains, so
they are packed once; a weight changed in place (its version counter moves) is packed again.

Only the forward product uses the packed copy: the backward pass (gradient with respect to the input, the only
one a frozen weight needs) is a plain matmul with the original weight. The packed copies are extra memory, one
more copy of each frozen linear weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available()


class _PackedLinearProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, packed, bias):
        ctx.save_for_backward(weight)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        # The first layer's input is the embedding output, which needs no gradient.
        return grad_output @ weight if ctx.needs_input_grad[0] else None, None, None, None


class PackedLinear(nn.Linear):
    """An nn.Linear (same parameters, same state_dict) whose forward uses a packed copy of its frozen weight."""

    _packed: torch.Tensor | None
    _packed_version: tuple[int, int]
    _merged: torch.Tensor | None  # a packed weight with a LoRA delta added, used while sampling

    def reset_packing(self) -> None:
        self._packed, self._packed_version, self._merged = None, (0, -1), None

    def use_merged_weight(self, weight: torch.Tensor | None) -> None:
        """Compute no-grad passes with `weight` (packed now) instead of this layer's own; None to stop."""
        self._merged = None if weight is None else torch.ops.mkldnn._reorder_linear_weight(weight, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._merged is not None:
            if torch.is_grad_enabled():
                # Inside adapter_merged the LoRA wrappers are switched off: a pass that trains would silently
                # train nothing, so it is refused.
                raise RuntimeError("adapter_merged() is for passes under torch.no_grad()")
            return torch.ops.mkldnn._linear_pointwise(x, self._merged, self.bias, "none", [None], "")
        weight, bias = self.weight, self.bias
        trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        if trainable or x.device.type != "cpu" or x.dtype != weight.dtype:
            return super().forward(x)
        version = (weight.data_ptr(), weight._version)
        if self._packed is None or self._packed_version != version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
            self._packed_version = version
        if torch.is_grad_enabled() and x.requires_grad:
            return _PackedLinearProduct.apply(x, weight.detach(), self._packed, self.bias)
        # Sampling and reference passes: no graph to record, so skip the autograd Function's bookkeeping.
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [None], "")


def pack_frozen_linears(model: nn.Module) -> int:
    """Switch every fp32 nn.Linear of `model` on the CPU to PackedLinear; returns how many. A no-op where oneDNN
    is missing. Trainable linears (requires_grad weights) keep the plain path at call time."""
    if not packing_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
            module.__class__ = PackedLinear
            cast(PackedLinear, module).reset_packing()
            count += 1
    return count


@contextmanager
def adapter_merged(model: nn.Module) -> Iterator[None]:
    """For no-grad passes (sampling): each LoRA layer over a PackedLinear computes with one packed weight W + BA,
    so the pass does no separate adapter products. The plain weights are never modified: the merged weight is a
    new tensor, dropped on exit. A no-op for a model without such layers."""
    from peft.tuners.lora import LoraLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    bases = [layer.get_base_layer() for layer in layers]
    if not layers or not all(isinstance(b, PackedLinear) for b in bases) or not hasattr(model, "disable_adapter"):
        yield
        return
    with torch.no_grad():
        for layer, base in zip(layers, bases, strict=True):
            merged = base.weight.detach().clone()
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    merged += layer.get_delta_weight(name)
            base.use_merged_weight(merged)
    try:
        with cast(Any, model).disable_adapter():
            yield
    finally:
        for base in bases:
            base.use_merged_weight(None)
