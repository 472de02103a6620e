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
    """One of every layer kind the adapters must handle (small, deterministic), 1-d to 3-d."""
    torch.manual_seed(0)
    return {
        "conv1d_k5s2": nn.Conv1d(6, 8, kernel_size=5, stride=2, padding=2),
        "conv1d_grouped": nn.Conv1d(8, 12, kernel_size=3, groups=4, dilation=2, padding=2),
        "conv1d_dw_circular": nn.Conv1d(8, 8, kernel_size=3, groups=8, padding=1, padding_mode="circular"),
        "conv3d_3x3x3": nn.Conv3d(4, 6, kernel_size=3, padding=1),
        "conv3d_grouped_stride": nn.Conv3d(8, 8, kernel_size=(3, 1, 3), stride=(1, 2, 2), groups=2, bias=False),
        "conv3d_dw": nn.Conv3d(6, 6, kernel_size=3, groups=6, padding=1),
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
    if type(layer).__name__ == "Conv1D":  # transformers' GPT-2 style linear: weight (in, out)
        return torch.randn(batch, 5, layer.weight.shape[0])
    spatial = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[next(c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
                                                             if isinstance(layer, c))]
    side = size if spatial < 3 else 6
    return torch.randn(batch, layer.in_channels, *([side] * spatial))


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
