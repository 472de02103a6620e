"""Plain-autograd reference of the adapted weight: the formulas of REFERENCE.md §1, no custom Function."""

from __future__ import annotations

import copy

import torch
from torch import nn

from liera_vision.core import AdapterLayer


def reference_delta(layer: AdapterLayer) -> torch.Tensor:
    w = layer.base_layer.weight
    m = layer.lora_B @ layer.lora_A
    if layer.pissa_B0 is not None:
        m = m - layer.pissa_B0 @ layer.pissa_A0
    return layer.scaling * m.reshape(w.shape)


def reference_weight(layer: AdapterLayer) -> torch.Tensor:
    w = layer.base_layer.weight
    d = reference_delta(layer)
    if layer.mode == "additive":
        v = w + d
    elif layer.mode == "taylor":
        v = w + w * d
    else:
        v = w * torch.exp(d)
    if layer.zero_fallback:
        v = v + (w == 0) * d
    if layer.dora_magnitude is not None:
        norm = v.detach().flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
        v = layer.dora_magnitude.view_as(norm) * v / norm
    return v


def reference_module(layer: AdapterLayer) -> nn.Module:
    """An independent copy of the base layer carrying the reference weight (no grad)."""
    ref = copy.deepcopy(layer.base_layer)
    with torch.no_grad():
        ref.weight.copy_(reference_weight(layer))
    return ref


def randomize_(layer: AdapterLayer, scale: float = 0.1, seed: int = 1) -> AdapterLayer:
    """Move the adapter away from its (identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_B):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        if layer.dora_magnitude is not None:
            layer.dora_magnitude.mul_(1 + 0.1 * torch.randn(layer.dora_magnitude.shape, generator=g))
    return layer
