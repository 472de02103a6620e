"""A failed operation leaves the model exactly as it was (issue: real inputs, kind B, core part).

"Exactly": the same module objects at every path, the same parameter and buffer objects with the same
values, the same ``requires_grad`` and training flags, no adapter config attached.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    adapter_configs,
    adapter_layers,
    apply_adapters,
    load_adapter,
    reset_adapters,
    save_adapter,
)
from liera_vision.errors import ZeroWeightWarning
from tests.core.reference import randomize_


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(name, id(m), type(m).__name__) for name, m in model.named_modules()],
        "params": [(name, id(p), p.requires_grad, p.detach().clone()) for name, p in model.named_parameters()],
        "buffers": [(name, id(b), b.clone()) for name, b in model.named_buffers()],
        "training": [m.training for m in model.modules()],
        "configs": adapter_configs(model),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert [(n, i, g) for n, i, g, _ in after["params"]] == [(n, i, g) for n, i, g, _ in before["params"]]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(after["params"], before["params"]))
    assert [(n, i) for n, i, _ in after["buffers"]] == [(n, i) for n, i, _ in before["buffers"]]
    assert after["training"] == before["training"] and after["configs"] == before["configs"]


def test_load_adapter_with_a_wrong_head_leaves_a_plain_model_untouched(atto_factory, tmp_path):
    """The issue's case: a 10-class LieRA r4 adapter with the head saved, loaded into a 5-class atto."""
    model, _ = apply_adapters(atto_factory(num_classes=10), AdapterConfig(rank=4, modules_to_save=["head"]))
    path = save_adapter(model, tmp_path / "ten.safetensors")
    target = atto_factory(num_classes=5).train()
    target.stages[1].eval()  # a mixed training-flag state must survive too
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"tensor 'head.fc.bias' has shape \(10,\), the model expects \(5,\)"):
        load_adapter(target, path)
    assert_unchanged(target, before)
    assert not adapter_layers(target)


def test_load_adapter_into_an_adapted_model_keeps_its_values_on_error(atto_factory, tmp_path):
    config = AdapterConfig(rank=2, modules_to_save=["head"])
    source, _ = apply_adapters(atto_factory(num_classes=10), config)
    path = save_adapter(source, tmp_path / "ten.safetensors")
    target, _ = apply_adapters(atto_factory(num_classes=5), config)
    for layer in adapter_layers(target).values():
        randomize_(layer)
    before = snapshot(target)
    with pytest.raises(ValueError, match="head.fc"):
        load_adapter(target, path)
    assert_unchanged(target, before)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten())


def test_rank_error_on_a_later_target_changes_nothing():
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"layer '2': rank 10 exceeds the largest rank .* \(8\)"):
        apply_adapters(model, AdapterConfig(rank=10, targets=["0", "2"], rank_pattern={"0": 4}))
    assert_unchanged(model, before)


def test_error_after_wrapping_rolls_back(monkeypatch):
    """An error raised late (here a ZeroWeightWarning turned into an error) undoes the wrapping and freezing."""
    model = net()
    with torch.no_grad():
        model[2].weight[0] = 0.0
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroWeightWarning)
        with pytest.raises(ZeroWeightWarning):
            apply_adapters(model, AdapterConfig(rank=1, targets=["0", "2"]))
    assert_unchanged(model, before)


def test_weight_derived_scale_of_all_zero_weights_is_refused_before_any_change():
    model = net()
    with torch.no_grad():
        model[2].weight.zero_()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"alpha='auto-layer' .* the weights of \['2'\] are all zero"):
        apply_adapters(model, AdapterConfig(rank=1, targets=["0", "2"], alpha="auto-layer"))
    assert_unchanged(model, before)


def test_failed_reset_leaves_the_adapters_as_they_were():
    model, _ = apply_adapters(net(), AdapterConfig(rank=1, targets=["0", "2"], alpha="auto-layer"))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    with torch.no_grad():
        model[2].base_layer.weight.zero_()  # new (all-zero) weights: no 1/mean|W|
    before = snapshot(model)
    with pytest.raises(ValueError, match="all zero"):
        reset_adapters(model)
    assert_unchanged(model, before)
