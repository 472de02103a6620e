"""Inputs a new user brings (found by trying the core as one): each gets the right result or one clear error."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    adapter_layers,
    apply_adapters,
    count_parameters,
    disable_adapters,
    get_adapter_config,
    load_adapter,
    merge_adapters,
    merge_and_unload,
    read_adapter_file,
    reset_adapters,
    save_adapter,
    set_adapter,
)
from liera_vision.errors import LieraWarning
from tests.core.reference import randomize_

CFG = dict(rank=2, alpha=2.0, targets="all")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def perturb(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    for layer in adapter_layers(model).values():
        if adapter_name is None or adapter_name in layer.settings:
            randomize_(layer, scale=0.3, adapter_name=adapter_name)
    return model


def test_disable_adapters_with_adapters_on_different_layers():
    model = mlp()
    apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, targets=["0"]))
    apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, targets=["2"]), adapter_name="b")
    perturb(model, "default"), perturb(model, "b")
    x = torch.randn(3, 4)
    adapted = model(x)
    with disable_adapters(model):
        assert torch.allclose(model(x), mlp()(x))
    assert torch.allclose(model(x), adapted)
    set_adapter(model, "b")
    with disable_adapters(model):
        assert torch.allclose(model(x), mlp()(x))
    assert not torch.allclose(model(x), mlp()(x))  # "b" is live again on layer 2


def test_the_model_keeps_its_own_config():
    config = AdapterConfig(rank=2, alpha=2.0, targets=["0", "2"])
    model, _ = apply_adapters(mlp(), config)
    with pytest.raises(AttributeError):
        config.composition = "additive"  # frozen
    config.targets.append("4")  # its lists are the caller's; the model's copy does not change
    assert get_adapter_config(model).targets == ["0", "2"]


def test_single_strings_and_none_are_what_peft_users_mean():
    config = AdapterConfig(targets="all", exclude="4", modules_to_save=None, rank_pattern=None, alpha_pattern=None,
                           dropout="1e-1", rank=2, alpha=2.0)
    assert (config.exclude, config.modules_to_save, config.rank_pattern, config.dropout) == (["4"], [], {}, 0.1)
    model, _ = apply_adapters(mlp(), config)
    assert list(adapter_layers(model)) == ["0", "2"]
    _, report = apply_adapters(mlp(), AdapterConfig(targets="all", modules_to_save="4", rank=2, alpha=2.0))
    assert report.modules_to_save == ["4"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=float("inf")), "alpha"), (dict(alpha="1e400"), "alpha"), (dict(dropout=None), "dropout must be a"),
    (dict(dropout=[0.1]), "dropout must be a"), (dict(dropout="abc"), "dropout must be a"),
    (dict(targets=None), "targets must be a list"), (dict(targets=5), "targets must be a list"),
    (dict(exclude=3), "exclude must be a list"), (dict(rank_pattern=["a"]), "rank_pattern must be a dict"),
    (dict(zero_weight_fallback="false"), "zero_weight_fallback must be True or False"),
])
def test_config_values_are_checked_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_numpy_integers_and_yaml_numbers_are_numbers():
    import numpy as np

    assert AdapterConfig(rank=np.int64(4)).rank == 4 and type(AdapterConfig(rank=np.int64(4)).rank) is int
    assert AdapterConfig.from_yaml("rank: 4\ndropout: 1e-1\n").dropout == 0.1
    with pytest.raises(ValueError, match="YAML is not valid"):
        AdapterConfig.from_yaml("rank: [4\n")
    with pytest.raises(ValueError, match=r"version must be 2 .* got '2'"):
        AdapterConfig.from_dict({"version": "2"})
    with pytest.raises(ValueError, match="version 3 is newer"):
        AdapterConfig.from_dict({"version": 3})


def test_adding_or_resetting_on_merged_layers_is_refused():
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    perturb(model)
    merge_adapters(model)
    with pytest.raises(ValueError, match=r"hold merged adapters: a new adapter would start from the merged"):
        apply_adapters(model, AdapterConfig(**CFG, post="dora"), adapter_name="b")
    with pytest.raises(ValueError, match="unmerge_adapters"):
        reset_adapters(model)


def test_reset_of_several_adapters_is_one_transaction():
    model, _ = apply_adapters(mlp(), AdapterConfig(rank=2, targets=["0"], alpha="auto-layer"))
    apply_adapters(model, AdapterConfig(rank=2, targets=["2"], alpha="auto-layer"), adapter_name="b")
    perturb(model, "default")
    before = model[0].lora_A["default"].detach().clone()
    with torch.no_grad():
        model[2].base_layer.weight.zero_()  # adapter "b" cannot derive its scale any more
    with pytest.raises(ValueError, match="all zero"):
        reset_adapters(model)
    assert torch.equal(model[0].lora_A["default"], before)  # "default" was not reset either


def test_safe_merge_checks_every_layer_before_merging_any():
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    with torch.no_grad():
        model[4].lora_B["default"].fill_(float("nan"))
    with pytest.raises(ValueError, match=r"layer '4'.* NaN / inf .* nothing was merged"):
        merge_adapters(model, safe_merge=True)
    assert not any(layer.merged for layer in adapter_layers(model).values())


def test_adapted_module_inside_another_model(tmp_path):
    """A detector holding an adapted backbone: the outer model sees the adapters, saves and unloads them."""
    outer = nn.Module()
    outer.backbone = mlp()
    outer.head = nn.Linear(3, 2)
    apply_adapters(outer.backbone, AdapterConfig(**CFG))
    perturb(outer.backbone)
    assert get_adapter_config(outer) == get_adapter_config(outer.backbone)
    state = read_adapter_file(save_adapter(outer, tmp_path / "outer.safetensors"))[1]
    assert "backbone.0.lora_A" in state
    x = torch.randn(2, 4)
    expected = outer.backbone(x)
    merge_and_unload(outer)
    assert get_adapter_config(outer.backbone) is None and torch.allclose(outer.backbone(x), expected, atol=1e-6)
    apply_adapters(outer.backbone, AdapterConfig(**CFG))  # not refused by a stale config


def test_bad_tensor_contents_in_an_adapter_file(tmp_path):
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    path = save_adapter(model, tmp_path / "a.safetensors")
    config, tensors = read_adapter_file(path)
    meta = {"format": "liera_vision.adapter", "format_version": "2", "adapter_config": config.to_json()}
    for edit, message in [
        (lambda t: t.__setitem__("0.lora_A", t["0.lora_A"].long()), r"'0.lora_A' has dtype torch.int64"),
        (lambda t: t["0.lora_B"].fill_(float("nan")), r"'0.lora_B' holds NaN / inf"),
        (lambda t: t["0.lora_scaling"].fill_(-1.0), r"'0.lora_scaling' \(alpha / rank\) must be positive"),
        (lambda t: [t.pop(k) for k in list(t) if k.endswith("lora_scaling")], r"missing keys \['0.lora_scaling'"),
    ]:
        bad = {k: v.clone() for k, v in tensors.items()}
        edit(bad)
        save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match=message):
            load_adapter(mlp(), tmp_path / "bad.safetensors")


@pytest.mark.parametrize("name", ["train", "to", "keys", "training", "persistent"])
def test_adapter_names_that_are_module_attributes(name):
    with pytest.raises(ValueError, match=rf"not an attribute of a torch module .* got '{name}'"):
        apply_adapters(mlp(), AdapterConfig(**CFG), adapter_name=name)


def test_tied_parameters_count_once_and_save(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight
    assert count_parameters(model).total == 10 * 4 + 4 * 4 + 4
    apply_adapters(model, AdapterConfig(rank=1, alpha=1.0, targets=["1"], modules_to_save=["0", "2"]))
    path = save_adapter(model, tmp_path / "tied.safetensors")  # safetensors refuses shared memory: copies are written
    fresh = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    fresh[2].weight = fresh[0].weight
    load_adapter(fresh, path)
    assert torch.equal(fresh[0].weight, model[0].weight) and fresh[2].weight is fresh[0].weight


def test_modules_to_save_may_not_be_another_adapters_layer():
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    with pytest.raises(ValueError, match=r"modules_to_save \['4'\] hold \(or are\) layers another adapter wraps"):
        apply_adapters(model, AdapterConfig(rank=1, alpha=1.0, targets=["0"], modules_to_save=["4"]), adapter_name="b")


def test_paths_and_arguments_of_the_wrong_kind(tmp_path):
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    with pytest.raises(ValueError, match=r"is a folder, not a liera-vision adapter file .*tools/convert_adapter.py"):
        load_adapter(mlp(), tmp_path)
    with pytest.raises(ValueError, match=r"is a folder; give the adapter file's path"):
        save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="path must be a str or os.PathLike, got NoneType"):
        save_adapter(model, None)
    for call in (lambda: apply_adapters("resnet18", AdapterConfig()), lambda: load_adapter(None, "x"),
                 lambda: count_parameters(None)):
        with pytest.raises(ValueError, match="expects a torch nn.Module"):
            call()
    with pytest.raises(ValueError, match="one adapter's name"):
        set_adapter(model, ["default", "b"])


def test_weight_of_an_adapter_layer_is_not_assignable():
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    with pytest.raises(AttributeError, match=r"computed .* set or edit base_layer.weight"):
        model[0].weight = nn.Parameter(torch.zeros(8, 4))


def test_merge_twice_warns_once_and_disable_restores_flags():
    model, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    merge_adapters(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_adapters(model)
    assert len([w for w in caught if issubclass(w.category, LieraWarning)]) == 1
    model2, _ = apply_adapters(mlp(), AdapterConfig(**CFG))
    model2[0].lora_A["default"].requires_grad_(False)  # frozen by the user
    with disable_adapters(model2):
        pass
    assert not model2[0].lora_A["default"].requires_grad and model2[2].lora_A["default"].requires_grad


def test_exclude_matches_every_name_of_a_shared_module():
    model = mlp()
    model.alias = model[2]
    apply_adapters(model, AdapterConfig(rank=1, alpha=1.0, targets="all", exclude=["alias"]))
    assert sorted(adapter_layers(model)) == ["0", "4"] and isinstance(model.alias, nn.Linear)


def test_batchnorm_statistics_are_named_in_the_report():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    _, report = apply_adapters(model, AdapterConfig(**CFG))
    assert "running statistics" in str(report) and "'1'" in str(report)
    _, saved = apply_adapters(copy.deepcopy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))),
                              AdapterConfig(**CFG, modules_to_save=["1"]))
    assert not saved.notes


def test_inference_mode_is_refused():
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        apply_adapters(mlp(), AdapterConfig(**CFG))
