"""Shared fixtures: tiny layers and models, generated data. Nothing here downloads anything."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_environment():
    """Code run in-process (mmengine, Lightning) may set variables; they must not leak into later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def layer_zoo() -> dict[str, nn.Module]:
    """One of every layer kind the adapters must handle (small, deterministic)."""
    torch.manual_seed(0)
    return {
        "stem4x4s4": nn.Conv2d(3, 16, kernel_size=4, stride=4),
        "down2x2s2": nn.Conv2d(8, 16, kernel_size=2, stride=2),
        "dw7x7": nn.Conv2d(16, 16, kernel_size=7, padding=3, groups=16),
        "grouped3x3": nn.Conv2d(16, 32, kernel_size=3, padding=1, groups=4, bias=False),
        "dilated3x3": nn.Conv2d(8, 8, kernel_size=3, padding=2, dilation=2),
        "same_reflect": nn.Conv2d(8, 12, kernel_size=3, padding="same", padding_mode="reflect"),
        "nonsquare3x5": nn.Conv2d(8, 8, kernel_size=(3, 5), stride=(1, 2), padding=(1, 2)),
        "conv1x1": nn.Conv2d(8, 16, kernel_size=1),
        "linear": nn.Linear(12, 10),
    }


def input_for(layer: nn.Module, batch: int = 2, size: int = 16) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(batch, 5, layer.in_features)
    return torch.randn(batch, layer.in_channels, size, size)


@pytest.fixture(params=list(layer_zoo()))
def zoo_layer(request) -> tuple[str, nn.Module]:
    return request.param, layer_zoo()[request.param]


@pytest.fixture(scope="session")
def atto_factory():
    """A factory of random-initialised timm ConvNeXt-V2 atto models (same weights per seed)."""
    import timm

    def make(num_classes: int = 10, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model("convnextv2_atto", num_classes=num_classes).eval()

    return make
