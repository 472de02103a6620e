"""Plain-autograd reference of the adapted weight (the formulas of the LieRA paper, arXiv 2504.00851 §3,
and of DoRA / PiSSA), written without the library's custom autograd function or registries."""

from __future__ import annotations

import copy

import torch
from torch import nn

from liera_vision.core import AdapterLayer


def tensors(layer: AdapterLayer, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    return layer.adapter_tensors(adapter_name or layer.active_adapter)


def canonical(layer: AdapterLayer, weight: torch.Tensor) -> torch.Tensor:
    return weight.t() if layer.kind.transposed else weight


def reference_delta(layer: AdapterLayer, adapter_name: str | None = None) -> torch.Tensor:
    """ΔW = (α/r) · reshape(B A − B₀ A₀) in the canonical (out-channels-first) layout."""
    t = tensors(layer, adapter_name)
    w = canonical(layer, layer.base_layer.weight)
    m = t["lora_B"] @ t["lora_A"]
    if "lora_B_start" in t:
        m = m - t["lora_B_start"] @ t["lora_A_start"]
    return t["lora_scaling"] * m.reshape(w.shape)


def reference_weight(layer: AdapterLayer, adapter_name: str | None = None) -> torch.Tensor:
    """W' in the base weight's stored layout."""
    name = adapter_name or layer.active_adapter
    config = layer.settings[name].config
    t = tensors(layer, name)
    w = canonical(layer, layer.base_layer.weight)
    d = reference_delta(layer, name)
    if config.composition == "additive":
        v = w + d
    elif config.composition == "taylor":
        v = w + w * d
    else:
        v = w * torch.exp(d)
    if config.zero_weight_fallback:
        v = v + (w == 0) * d
    if config.post == "dora":
        norm = v.detach().flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
        v = t["lora_magnitude"].view_as(norm) * v / norm
    return canonical(layer, v)


def reference_module(layer: AdapterLayer) -> nn.Module:
    """An independent copy of the base layer carrying the reference weight (no grad)."""
    ref = copy.deepcopy(layer.base_layer)
    with torch.no_grad():
        ref.weight.copy_(reference_weight(layer))
    return ref


def randomize_(layer: AdapterLayer, scale: float = 0.1, seed: int = 1, adapter_name: str | None = None) -> AdapterLayer:
    """Move an adapter away from its (identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    t = tensors(layer, adapter_name)
    with torch.no_grad():
        for key in ("lora_A", "lora_B"):
            t[key].add_(torch.randn(t[key].shape, generator=g, dtype=t[key].dtype) * scale)
        if "lora_magnitude" in t:
            t["lora_magnitude"].mul_(1 + 0.1 * torch.randn(t["lora_magnitude"].shape, generator=g))
    return layer


def adapter_params(layer: AdapterLayer, adapter_name: str | None = None) -> list[torch.Tensor]:
    """The trainable tensors of one adapter, in a fixed order."""
    t = tensors(layer, adapter_name)
    return [t[k] for k in ("lora_A", "lora_B", "lora_magnitude") if k in t]
