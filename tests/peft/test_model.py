"""LieRA through PEFT on tiny nets: the layers are core's (same tensors, same outputs, same scale), PEFT's
model API works on them (named adapters, disable, merge, save / load), and failures leave the model as it was."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from torch import nn

from liera_vision.core import AdapterConfig, AdapterLayer, apply_adapters
from liera_vision.errors import LieraWarning, ZeroWeightWarning
from liera_vision.peft import LieRAConfig, LieRALayer, LieRAModel
from tests.conftest import input_for, layer_zoo
from tests.core.reference import randomize_, reference_weight

METHODS = {  # LieRAConfig / AdapterConfig fields shared by both
    "taylor": dict(),
    "exp": dict(composition="exp"),
    "additive": dict(composition="additive", alpha=2.0),
    "dora": dict(post="dora"),
    "pissa": dict(init="pissa", alpha=4.0),
    "flat-zero-fallback": dict(factorization="flat", zero_weight_fallback=True),
}


def zoo() -> dict[str, nn.Module]:
    from transformers.pytorch_utils import Conv1D

    layers = layer_zoo()
    torch.manual_seed(0)
    layers["gpt2_conv1d"] = Conv1D(10, 12)
    return layers


def peft_layers(model: nn.Module) -> dict[str, LieRALayer]:
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LieRALayer)}


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_layers_are_core_layers_on_every_layer_kind(method):
    """Every layer kind (Conv1d/2d/3d incl. depthwise and grouped, linear, transformers' Conv1D): the PEFT layer
    holds the same tensors as core's apply_adapters gives (same seed), computes W' by the reference formula, and
    its outputs, merge and merge_and_unload agree."""
    for name, layer in zoo().items():
        core_model, _ = apply_adapters(nn.Sequential(copy.deepcopy(layer)),
                                       AdapterConfig(rank=1, targets="all", **METHODS[method]))
        torch.manual_seed(0)
        peft_model = peft.get_peft_model(nn.Sequential(copy.deepcopy(layer)),
                                         LieRAConfig(r=1, target_modules="all", **METHODS[method]))
        ours, theirs = peft_layers(peft_model)["0"], core_model[0]
        assert type(ours).__mro__[1] is AdapterLayer, name
        core_tensors, peft_tensors = theirs.adapter_tensors("default"), ours.adapter_tensors("default")
        assert core_tensors.keys() == peft_tensors.keys(), name
        assert torch.equal(core_tensors["lora_scaling"], peft_tensors["lora_scaling"]), name
        randomize_(theirs, scale=0.2)
        with torch.no_grad():
            for attr, tensor in core_tensors.items():
                peft_tensors[attr].copy_(tensor)
        x = input_for(layer)
        expected = theirs(x)
        assert torch.allclose(ours.weight, reference_weight(ours), atol=1e-5), name
        assert torch.allclose(peft_model(x), expected, atol=1e-5), name
        peft_model.merge_adapter()
        assert torch.allclose(peft_model(x), expected, atol=1e-5), name
        peft_model.unmerge_adapter()
        plain = peft_model.merge_and_unload()
        assert type(plain[0]) is type(layer) and torch.allclose(plain(x), expected, atol=1e-5), name


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                         nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.Conv2d(8, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("alpha", ["auto", "auto-kind", "auto-layer"])
def test_weight_derived_scale_is_resolved_over_all_layers_of_the_adapter(alpha):
    """PEFT creates layers one by one; the scale (1/mean|W| over all adapted weights for "auto") is the one core
    resolves for the whole model, stored in every layer's lora_scaling buffer and saved by PEFT."""
    _, report = apply_adapters(net(), AdapterConfig(rank=1, targets="all", alpha=alpha))
    expected = {row.name: row.scaling for row in report.layers}
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules="all", alpha=alpha))
    got = {name: float(layer.lora_scaling["default"]) for name, layer in peft_layers(model).items()}
    assert got == pytest.approx(expected, rel=1e-6)
    assert len(set(got.values())) == {"auto": 1, "auto-kind": 4, "auto-layer": 5}[alpha]
    state = peft.get_peft_model_state_dict(model)
    assert float(state["base_model.model.1.lora_scaling"]) == pytest.approx(expected["1"], rel=1e-6)


def test_pissa_with_auto_scale_starts_at_the_base_model_and_matches_core():
    """PiSSA's starting factors depend on the scale, which PEFT's layer-by-layer creation knows only at the end."""
    x = torch.randn(2, 3, 16, 16)
    model = peft.get_peft_model(net(), LieRAConfig(r=2, init="pissa", target_modules="spatial"))
    core_model, _ = apply_adapters(net(), AdapterConfig(rank=2, init="pissa", targets="spatial"))
    assert torch.allclose(model(x), net()(x), atol=1e-5)
    for name, layer in peft_layers(model).items():
        theirs = core_model.get_submodule(name)
        assert torch.equal(layer.lora_scaling["default"], theirs.lora_scaling["default"])
        assert torch.allclose(layer.lora_B_start["default"] @ layer.lora_A_start["default"],
                              theirs.lora_B_start["default"] @ theirs.lora_A_start["default"], atol=1e-5)


def test_presets_rank_and_alpha_patterns():
    """target_modules=None is core's "spatial" preset, resolved to the explicit list PEFT then saves; rank_pattern
    / alpha_pattern match as PEFT (and core) match them."""
    model = peft.get_peft_model(net(), LieRAConfig(r=2, alpha=4.0, rank_pattern={r"[12]": 4, r"1": 1},
                                                   alpha_pattern={r"\d": 3.0}))
    config = model.peft_config["default"]
    assert config.target_modules == "0|1|2"  # exact names (PEFT would match a list's entries as suffixes too)
    layers = peft_layers(model)
    assert {n: layer.settings["default"].rank for n, layer in layers.items()} == {"0": 2, "1": 4, "2": 4}
    assert {n: float(layer.lora_scaling["default"]) for n, layer in layers.items()} == {"0": 1.5, "1": 0.75, "2": 0.75}
    pointwise = peft.get_peft_model(net(), LieRAConfig(r=1, alpha=1.0, target_modules="pointwise"))
    assert pointwise.peft_config["default"].target_modules == "3|6"
    regex = peft.get_peft_model(net(), LieRAConfig(r=1, alpha=1.0, target_modules=r"[36]"))  # PEFT's own rule
    assert sorted(peft_layers(regex)) == ["3", "6"]


def test_trains_only_the_adapter_and_modules_to_save():
    model = peft.get_peft_model(net(), LieRAConfig(r=1, modules_to_save=["6"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{i}.lora_{ab}.default" for i in "012" for ab in "AB"} | \
        {"base_model.model.6.modules_to_save.default.weight", "base_model.model.6.modules_to_save.default.bias"}
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any(".lora_B." in n for n in changed)


def test_merge_and_unload_keeps_a_trained_container_module_to_save():
    """timm's classifier head is a container without .weight; PEFT 0.21 alone fails to unwrap it (AttributeError)."""
    model = net()
    model[6] = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 4))
    peft_model = peft.get_peft_model(model, LieRAConfig(r=1, modules_to_save=["6"]))
    for layer in peft_layers(peft_model).values():
        randomize_(layer, scale=0.2)
    with torch.no_grad():
        peft_model.base_model.model[6].modules_to_save["default"][1].weight.mul_(2.0)
    x = torch.randn(2, 3, 16, 16)
    expected = peft_model(x)
    plain = peft_model.merge_and_unload()
    assert type(plain[6]) is nn.Sequential and type(plain[1]) is nn.Conv2d
    assert torch.allclose(plain(x), expected, atol=1e-5)


def two_adapters():
    model = peft.get_peft_model(net(), LieRAConfig(r=2, alpha=2.0, modules_to_save=["6"]))
    model.add_adapter("second", LieRAConfig(r=1, composition="additive", target_modules=["0", "3"]))
    for layer in peft_layers(model).values():
        for name in layer.settings:
            randomize_(layer, scale=0.3, adapter_name=name, seed=len(name))
    return model


def test_named_adapters_switch_disable_and_delete():
    x = torch.randn(2, 3, 16, 16)
    base = net()(x)
    model = two_adapters()
    layers = peft_layers(model)
    assert sorted(layers) == ["0", "1", "2", "3"] and sorted(layers["0"].settings) == ["default", "second"]
    out_default = model(x)
    assert model.active_adapters == ["default"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".second" in n)
    model.set_adapter("second")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"base_model.model.{i}.lora_{ab}.second" for i in "03" for ab in "AB"}
    out_second = model(x)
    reference = net()  # layers 1 and 2 carry no "second" adapter: they run their base weights
    with torch.no_grad():
        for i in (0, 3):
            reference[i].weight.copy_(layers[str(i)].effective_weight("second"))
    assert torch.allclose(out_second, reference(x), atol=1e-5) and not torch.allclose(out_second, out_default)
    with model.disable_adapter():
        assert torch.allclose(model(x), base, atol=1e-6)
    assert torch.allclose(model(x), out_second, atol=1e-6)
    model.merge_adapter()
    assert torch.allclose(model(x), out_second, atol=1e-5) and layers["0"].merged and not layers["1"].merged
    model.unmerge_adapter()
    model.set_adapter("default")
    assert torch.allclose(model(x), out_default, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one adapter can be active"):
        model.base_model.set_adapter(["default", "second"])
    model.set_adapter("second")
    model.delete_adapter("second")
    assert model.active_adapters == ["default"] and list(model.peft_config) == ["default"]
    # layer 3 carried only "second": its (empty) wrapper stays, as PEFT leaves its own, and runs the base weight
    assert {n: list(layer.settings) for n, layer in layers.items()} == {"0": ["default"], "1": ["default"],
                                                                        "2": ["default"], "3": []}
    assert torch.allclose(model(x), out_default, atol=1e-6)


def test_save_and_load_several_adapters(tmp_path):
    x = torch.randn(2, 3, 16, 16)
    model = two_adapters()
    out_default = model(x)
    model.set_adapter("second")
    out_second = model(x)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "second" / "adapter_config.json").is_file()  # PEFT's layout for a named adapter
    loaded = peft.PeftModel.from_pretrained(net(), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())  # PEFT's default: inference
    loaded.load_adapter(tmp_path / "second", adapter_name="second", is_trainable=True)
    assert torch.allclose(loaded(x), out_default, atol=1e-6)
    loaded.set_adapter("second")
    assert torch.allclose(loaded(x), out_second, atol=1e-6)
    assert any(p.requires_grad for n, p in loaded.named_parameters() if n.endswith(".lora_B.second"))
    fast = peft.PeftModel.from_pretrained(net(), tmp_path, low_cpu_mem_usage=True)
    assert torch.allclose(fast(x), out_default, atol=1e-6)
    assert fast.base_model.model[0].lora_A["default"].dtype == torch.float32


def test_a_failed_injection_leaves_the_model_as_it_was():
    model = two_adapters()
    modules = dict(model.named_modules())
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"layer '4' matched target_modules=\['1', '4'\] but is a AdaptiveAvgPool2d"):
        model.add_adapter("third", LieRAConfig(r=1, alpha=1.0, target_modules=["1", "4"]))
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(n) is m for n, m in modules.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads and "third" not in model.peft_config
    plain = net()
    with pytest.raises(ValueError, match=r"layer '1': rank 20 exceeds the largest rank"):
        peft.get_peft_model(plain, LieRAConfig(r=2, rank_pattern={"1": 20}, target_modules=["0", "1"]))
    assert type(plain[0]) is nn.Conv2d and type(plain[1]) is nn.Conv2d  # layer 0 was wrapped, then put back
    assert all(p.requires_grad for p in plain.parameters())


def test_preset_leaves_out_layers_it_cannot_adapt_and_says_so():
    model = net()
    model[1] = nn.utils.parametrizations.weight_norm(model[1])
    with pytest.warns(LieraWarning, match=r"leaves out 1 layer\(s\).*'1': its weight is not a stored parameter"):
        peft_model = peft.get_peft_model(model, LieRAConfig(r=1))
    assert sorted(peft_layers(peft_model)) == ["0", "2"]


def test_zero_weights_are_reported():
    model = net()
    with torch.no_grad():
        model[1].weight[0].zero_()
    with pytest.warns(ZeroWeightWarning, match=r"layer '1': 49 of 392"):
        peft.get_peft_model(model, LieRAConfig(r=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroWeightWarning)
        peft.get_peft_model(net(), LieRAConfig(r=1, composition="additive"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), r"LieRAConfig.r must be a positive integer, got 0"),
    (dict(composition="cayley"), r"LieRAConfig.composition must be one of \['additive', 'taylor', 'exp'\]"),
    (dict(composition="additive", alpha="auto"), r"LieRAConfig.alpha='auto' derives the scale from the weights"),
    (dict(rank_pattern={"(": 2}), r"LieRAConfig.rank_pattern: '\(' is not a valid regex"),
    (dict(target_modules=3), r"LieRAConfig.target_modules must be a string or a list of strings, got 3"),
    (dict(modules_to_save="head"), r"LieRAConfig.modules_to_save must be a list of module names"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LieRAConfig(**kwargs)


def test_config_maps_to_core_and_back():
    config = LieRAConfig(r=4, composition="exp", post="dora", init="pissa", alpha_pattern={"stem": 2.0},
                         modules_to_save=["head"])
    core = config.to_adapter_config(targets=["stem"], modules_to_save=["head"])
    assert (core.rank, core.alpha, core.composition, core.post, core.init, core.name) == \
        (4, "auto", "exp", "dora", "pissa", "pissa+dora+liera-exp-r4")
    again = LieRAConfig.from_adapter_config(core, modules_to_save=["head"])
    assert again.to_dict() == config.to_dict() and again.peft_type == "LIERA"
    assert LieRAConfig(composition="additive", r=4).alpha == 4.0  # the concrete choice, as in core
    assert isinstance(peft.get_peft_model(net(), LieRAConfig(r=1)).base_model, LieRAModel)
