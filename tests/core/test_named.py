"""Named adapters on one model (PEFT's layout): add, switch, disable, delete, merge several, save each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    active_adapter,
    adapter_layers,
    apply_adapters,
    delete_adapter,
    disable_adapters,
    get_adapter_config,
    load_adapter,
    merge_adapters,
    merge_and_unload,
    save_adapter,
    set_adapter,
    unmerge_adapters,
)
from tests.core.reference import randomize_


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


LIE = AdapterConfig(rank=2, alpha=2.0, targets="all")
LORA = AdapterConfig(rank=1, composition="additive", targets=[r"0", r"5"])


def two_adapters():
    model, _ = apply_adapters(net(), LIE)
    apply_adapters(model, LORA, adapter_name="second")
    for layer in adapter_layers(model).values():
        for name in layer.settings:
            randomize_(layer, scale=0.3, adapter_name=name, seed=len(name))
    return model


def test_second_adapter_is_added_inactive_and_switches():
    x = torch.randn(2, 3, 8, 8)
    model = two_adapters()
    assert active_adapter(model) == "default" and get_adapter_config(model) == LIE
    assert get_adapter_config(model, "second") == LORA
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".default") for n in trainable)
    out_default = model(x)
    set_adapter(model, "second")
    assert active_adapter(model) == "second"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_A.second", "0.lora_B.second", "5.lora_A.second", "5.lora_B.second"}
    out_second = model(x)
    # layer 2 has no "second" adapter: it runs its base weight
    reference = net()
    with torch.no_grad():
        reference[0].weight.copy_(model[0].effective_weight("second"))
        reference[5].weight.copy_(model[5].effective_weight("second"))
    assert torch.allclose(out_second, reference(x), atol=1e-5)
    assert not torch.allclose(out_default, out_second)
    set_adapter(model, "default")
    assert torch.allclose(model(x), out_default, atol=1e-6)
    with pytest.raises(ValueError, match=r"no adapter 'third'; it has \['default', 'second'\]"):
        set_adapter(model, "third")


def test_disable_adapters_runs_the_base_model_and_unmerges():
    x = torch.randn(2, 3, 8, 8)
    model = two_adapters()
    adapted = model(x)
    merge_adapters(model)
    merged_weight = model[0].base_layer.weight.detach().clone()
    with disable_adapters(model):
        assert torch.allclose(model(x), net()(x), atol=1e-6)
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
        with disable_adapters(model):  # nested (a helper that disables internally): still the base model after it
            pass
        assert torch.allclose(model(x), net()(x), atol=1e-6)
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    assert torch.allclose(model(x), adapted, atol=1e-5)
    # as it was: merged again, with the same weights
    assert all(layer.merged_adapters == ["default"] for layer in adapter_layers(model).values())
    assert torch.equal(model[0].base_layer.weight, merged_weight)


def test_delete_adapter_unwraps_layers_left_without_one():
    x = torch.randn(2, 3, 8, 8)
    model = two_adapters()
    out_default = model(x)
    set_adapter(model, "second")
    delete_adapter(model, "second")
    assert active_adapter(model) == "default" and list(adapter_layers(model)) == ["0", "2", "5"]
    # layer 2 never carried "second" but pointed at it while it was active: every layer runs "default" now
    assert all(layer.active_adapters == ["default"] for layer in adapter_layers(model).values())
    assert torch.allclose(model(x), out_default, atol=1e-6)
    delete_adapter(model, "default")
    assert not adapter_layers(model) and get_adapter_config(model) is None
    assert isinstance(model[0], nn.Conv2d)
    assert torch.allclose(model(x), net()(x))


def test_merging_two_adapters_composes_them_and_unmerges_exactly():
    """Merging a (Lie) then b (additive) gives W ⊙ (1 + Δa) + Δb; get_delta_weight / delta describe each
    adapter whatever the merge state; unmerge restores W bit for bit."""
    model = two_adapters()
    layer = model[0]
    original = layer.base_layer.weight.detach().clone()
    deltas = {n: layer.get_delta_weight(n) for n in ("default", "second")}
    algebra = {n: layer.delta(n) for n in ("default", "second")}
    layer.merge(adapter_names=["default", "second"])
    assert layer.merged_adapters == ["default", "second"]
    expected = original * (1 + algebra["default"]) + algebra["second"]
    assert torch.allclose(layer.base_layer.weight, expected, atol=1e-6)
    for n in ("default", "second"):
        assert torch.allclose(layer.get_delta_weight(n), deltas[n], atol=1e-7)
        assert torch.equal(layer.delta(n), algebra[n])
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original) and not layer.merged


def test_get_delta_weight_does_not_change_when_merged():
    model = two_adapters()
    layer = model[2]
    before = layer.get_delta_weight()
    merge_adapters(model)
    assert torch.allclose(layer.get_delta_weight(), before, atol=1e-7) and torch.count_nonzero(before) > 0
    unmerge_adapters(model)


def test_each_named_adapter_saves_and_loads_on_its_own(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model = two_adapters()
    path_a = save_adapter(model, tmp_path / "a.safetensors", adapter_name="default")
    path_b = save_adapter(model, tmp_path / "b.safetensors", adapter_name="second")
    out_a = model(x)
    set_adapter(model, "second")
    out_b = model(x)
    fresh = net()
    load_adapter(fresh, path_a)
    load_adapter(fresh, path_b, adapter_name="second")
    assert torch.allclose(fresh(x), out_a, atol=1e-6)
    set_adapter(fresh, "second")
    assert torch.allclose(fresh(x), out_b, atol=1e-6)
    plain = merge_and_unload(fresh)
    assert torch.allclose(plain(x), out_b, atol=1e-5)


def test_adapter_names_are_checked():
    model, _ = apply_adapters(net(), LIE)
    with pytest.raises(ValueError, match=r"already has an adapter named 'default'"):
        apply_adapters(model, LORA)
    with pytest.raises(ValueError, match=r"adapter name must be a non-empty string without '\.'"):
        apply_adapters(model, LORA, adapter_name="a.b")
    with pytest.raises(ValueError, match=r"exactly one adapter can be active"):
        model[0].set_adapter(["default", "default"])


def test_new_adapter_layers_follow_the_training_mode_of_the_layer_they_wrap():
    """An eval model stays in eval mode (no rank dropout) after adapters are applied; a training one trains."""
    for training in (False, True):
        model = net().train(training)
        apply_adapters(model, AdapterConfig(rank=1, alpha=1.0, dropout=0.5, targets="all"))
        assert {layer.training for layer in adapter_layers(model).values()} == {training}
    model = net()  # eval: repeated forwards agree although dropout is set
    apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, dropout=0.5, targets="all"))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), model(x))
