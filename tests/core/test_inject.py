"""Target selection, freezing, merge_and_unload and the paper's parameter counts on timm models."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    AdapterLayer,
    adapter_layers,
    apply_adapters,
    count_parameters,
    merge_adapters,
    merge_and_unload,
    unload_adapters,
    unmerge_adapters,
)
from liera_vision.errors import ZeroWeightWarning
from tests.core.reference import randomize_


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4),  # 0: stem
        nn.BatchNorm2d(8),  # 1
        nn.Conv2d(8, 8, 7, padding=3, groups=8),  # 2: depthwise
        nn.Conv2d(8, 16, 1),  # 3: pointwise
        nn.AdaptiveAvgPool2d(1),  # 4
        nn.Flatten(),  # 5
        nn.Linear(16, 5),  # 6: head
    )


@pytest.mark.parametrize("targets, expected", [
    ("spatial", ["0", "2"]),
    ("pointwise", ["3", "6"]),
    ("all", ["0", "2", "3", "6"]),
    ([r"[23]"], ["2", "3"]),
])
def test_target_presets_and_regexes(targets, expected):
    model, report = apply_adapters(small_net(), AdapterConfig(rank=1, targets=targets))
    assert sorted(adapter_layers(model)) == expected
    assert [layer.name for layer in report.layers] == expected


def test_regex_matches_dotted_suffix_and_exclude():
    model = timm.create_model("convnextv2_atto", num_classes=3)
    model, report = apply_adapters(model, AdapterConfig(rank=2, targets=["conv_dw"], exclude=[r"stages\.3\..*"]))
    names = list(adapter_layers(model))
    assert names and all(n.endswith("conv_dw") for n in names)
    assert not any(n.startswith("stages.3.") for n in names)


def test_freezes_everything_but_adapters_and_modules_to_save():
    model, report = apply_adapters(small_net(), AdapterConfig(rank=2, modules_to_save=["6", "1"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_A.default", "0.lora_B.default", "2.lora_A.default", "2.lora_B.default",
                         "6.weight", "6.bias", "1.weight", "1.bias"}
    assert report.trainable == sum(model.get_parameter(n).numel() for n in trainable)
    assert report.modules_to_save == ["6", "1"]


def test_modules_to_save_are_never_adapted():
    model, _ = apply_adapters(small_net(), AdapterConfig(rank=1, targets="pointwise", modules_to_save=["6"]))
    assert sorted(adapter_layers(model)) == ["3"]


@pytest.mark.parametrize("config, message", [
    (AdapterConfig(targets=["1"]), r"layer '1' .* is a torch.nn.modules.batchnorm.BatchNorm2d"),
    (AdapterConfig(rank=9, targets=["3"]), r"layer '3': rank 9 exceeds .* \(8\)"),
    (AdapterConfig(targets=["nope"]), r"matched no adaptable layer"),
    (AdapterConfig(modules_to_save=["nohead"]), r"modules_to_save pattern 'nohead'"),
])
def test_invalid_selections_raise_naming_the_layer(config, message):
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        apply_adapters(model, config)
    assert not adapter_layers(model)  # nothing changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_preset_that_matches_nothing():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"targets='spatial'.*matched no"):
        apply_adapters(mlp, AdapterConfig(targets="spatial"))


def test_applying_twice_raises():
    model, _ = apply_adapters(small_net(), AdapterConfig(rank=1))
    with pytest.raises(ValueError, match=r"already"):
        apply_adapters(model, AdapterConfig(rank=1))
    layer = model[0]
    with pytest.raises(ValueError, match=r"layer 'x' is already adapted; add a second adapter with add_adapter"):
        AdapterLayer(layer, AdapterConfig(rank=1), name="x")


def test_invalid_config_values():
    for kwargs, message in [
        (dict(method="ia3"), "method"), (dict(variant="vera"), "variant"), (dict(rank=0), "rank"),
        (dict(method="lora", composition="exp"), "method='lora' contradicts composition='exp'"),
        (dict(composition="cayley"), "composition"), (dict(init="gaussian"), "init"), (dict(post="vera"), "post"),
        (dict(variant="dora", post=None, init="pissa"), None), (dict(factorization="tucker"), "factorization"),
        (dict(targets="convs"), "targets"), (dict(targets=["("]), "not a valid regex"),
        (dict(dropout=1.0), "dropout"), (dict(alpha=-1), "alpha"), (dict(alpha="often"), "alpha"),
        (dict(composition="additive", alpha="auto"), "suits Lie compositions only"),
        (dict(rank_pattern={"dw": 0}), r"rank_pattern\['dw'\]"), (dict(alpha_pattern={"dw": "x"}), "alpha_pattern"),
        (dict(method="lora", zero_weight_fallback=True), "zero_weight_fallback"),
    ]:
        if message is None:  # a valid combination
            AdapterConfig(**kwargs)
            continue
        with pytest.raises(ValueError, match=message):
            AdapterConfig(**kwargs)
    with pytest.raises(ValueError, match=r"unknown AdapterConfig key\(s\) \['rnak'\]"):
        AdapterConfig.from_dict({"rnak": 4})


def test_config_round_trips():
    cfg = AdapterConfig(method="liera", variant="dora", rank=4, alpha=2.0, dropout=0.1, composition="exp",
                        factorization="flat", targets=[r"conv_dw"], exclude=["x"], modules_to_save=["head"],
                        rank_pattern={"stem": 2}, alpha_pattern={"stem": "auto-layer"}, zero_weight_fallback=True)
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg
    assert AdapterConfig.from_json(cfg.to_json()) == cfg
    assert AdapterConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.name == "dora+liera-exp-r4" and cfg.scaling == 0.5
    assert (cfg.post, cfg.init, cfg.method, cfg.variant) == ("dora", "lora", None, None)  # aliases resolved
    assert "method" not in cfg.to_dict() and cfg.to_dict()["version"] == 2
    assert AdapterConfig(method="lora").composition == "additive"
    assert AdapterConfig(method="lora", rank=4).alpha == 4.0  # LoRA's alpha defaults to the rank (scale 1)
    assert AdapterConfig().alpha == "auto" and AdapterConfig().scaling is None  # Lie: set by the weights
    both = AdapterConfig(init="pissa", post="dora", composition="exp", rank=16)
    assert both.name == "pissa+dora+liera-exp-r16"
    assert AdapterConfig(variant="pissa").name == "pissa+liera-taylor-r8"


def test_warns_on_zero_weight_entries_with_layer_name_and_fraction():
    model = small_net()
    with torch.no_grad():
        model[2].weight[:2] = 0.0  # 2 of 8 channels: 25%
    message = ("exactly zero cannot move under a Lie (multiplicative) update: layer '2': 98 of 392 (25.0000%). "
               "Set zero_weight_fallback=True")
    with pytest.warns(ZeroWeightWarning, match=re.escape(message)):
        _, report = apply_adapters(model, AdapterConfig(rank=1))
    assert report.layers[1].zero_fraction == pytest.approx(0.25)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LoRA and the fallback train zeros: nothing to warn about
        apply_adapters(small_net_with_zeros(), AdapterConfig(rank=1, method="lora"))
        apply_adapters(small_net_with_zeros(), AdapterConfig(rank=1, zero_weight_fallback=True))


def small_net_with_zeros() -> nn.Module:
    model = small_net()
    with torch.no_grad():
        model[2].weight[:2] = 0.0
    return model


def test_merge_unmerge_and_unload_whole_model():
    torch.manual_seed(0)
    model = small_net().eval()
    plain = small_net().eval()
    x = torch.randn(2, 3, 32, 32)
    model, _ = apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, targets="all", variant="dora"))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    adapted = model(x).detach()
    merge_adapters(model)
    assert torch.allclose(model(x), adapted, atol=1e-5)
    unmerge_adapters(model)
    assert torch.allclose(model(x), adapted, atol=1e-6)
    merged = merge_and_unload(model)
    assert not adapter_layers(merged)
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (merged[0], merged[2], merged[3], merged[6]))
    plain.load_state_dict(merged.state_dict(), strict=True)
    assert torch.allclose(plain(x), adapted, atol=1e-5)


def test_unload_without_merge_gives_back_the_original():
    model = small_net().eval()
    x = torch.randn(1, 3, 16, 16)
    expected = model(x).detach()
    apply_adapters(model, AdapterConfig(rank=1))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    assert not torch.allclose(model(x), expected)
    unload_adapters(model)
    assert torch.allclose(model(x), expected)


@pytest.fixture(scope="module")
def base_100_classes() -> nn.Module:
    """timm's convnextv2_base with a 100-class head, built once (its init is most of these tests' time)."""
    return timm.create_model("convnextv2_base", num_classes=100)


@pytest.mark.parametrize("method", ["liera", "lora"])
@pytest.mark.parametrize("rank, expected", [(8, 7_296_260), (16, 14_487_972)])
def test_paper_parameter_counts_convnextv2_base(base_100_classes, method, rank, expected):
    model = copy.deepcopy(base_100_classes)
    model, report = apply_adapters(model, AdapterConfig(method=method, rank=rank, modules_to_save=["head"]))
    counted = count_parameters(model)
    assert counted.trainable == expected == report.trainable
    assert report.adapter_params == 898_964 * rank
    assert len(report.layers) == 1 + 3 + 36  # stem, downsamples, depthwise 7x7
    assert "TOTAL" in str(counted) and "head.fc" in str(counted)


@pytest.mark.parametrize("arch, per_rank, r8", [("convnextv2_atto", 94_796, 791_108),
                                                ("convnextv2_tiny", 335_106, 2_759_284)])
def test_reference_counts_small_models(arch, per_rank, r8):
    model = timm.create_model(arch, num_classes=100)
    _, report = apply_adapters(model, AdapterConfig(rank=8, modules_to_save=["head"]))
    assert report.adapter_params == per_rank * 8 and report.trainable == r8


def test_flat_factorization_count_convnextv2_base(base_100_classes):
    model = copy.deepcopy(base_100_classes)
    _, report = apply_adapters(model, AdapterConfig(rank=1, factorization="flat"))
    assert report.adapter_params == 25_364


def test_report_gives_mean_abs_weight_and_the_suggested_lie_scaling():
    model = small_net()
    adapted = [model[0].weight, model[2].weight]
    expected = sum(float(w.detach().abs().sum()) for w in adapted) / sum(w.numel() for w in adapted)
    _, report = apply_adapters(model, AdapterConfig(rank=1, alpha=4))
    assert report.mean_abs_weight == pytest.approx(expected)
    assert report.suggested_lie_scaling == pytest.approx(1 / expected)
    assert f"alpha/rank 4; alpha='auto' would give {1 / expected:.3g}" in str(report)
    assert [layer.scaling for layer in report.layers] == [4.0, 4.0]
    _, auto = apply_adapters(small_net(), AdapterConfig(rank=1))  # the default: alpha / rank = 1 / mean|W|
    assert [layer.scaling for layer in auto.layers] == pytest.approx([1 / expected] * 2)
    assert "trainable" in auto.summary() and "alpha auto" in auto.summary()
