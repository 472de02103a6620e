"""N-d kernels (the factorization generalised beyond the paper's 2-d convs), transformers' Conv1D,
per-layer rank / alpha patterns, and the weight-derived Lie scale."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    AdapterLayer,
    adapter_layers,
    apply_adapters,
    load_adapter,
    merge_and_unload,
    reset_adapters,
    save_adapter,
)
from liera_vision.core.delta import factor_shape
from tests.core.reference import randomize_, reference_weight


@pytest.mark.parametrize("shape, groups, rank, expected", [
    # 2-d: loralib's ConvLoRA rule, A: (r·k, C_in·k), B: (C_out/g·k, r·k) — unchanged from the 2-d-only code
    ((16, 4, 3, 3), 4, 2, (4 * 3, 16 * 3, 2 * 3)),
    ((8, 8, 3, 5), 1, 2, (8 * 3, 8 * 5, 2 * 3)),
    # 1-d: the first (only) spatial size to the rows, nothing left for the columns
    ((12, 2, 3), 4, 2, (3 * 3, 8, 2 * 3)),
    # 3-d: k_1 to the rows, k_2 · k_3 to the columns
    ((6, 4, 3, 2, 5), 1, 2, (6 * 3, 4 * 10, 2 * 3)),
    ((8, 4, 3, 1, 3), 2, 1, (4 * 3, 8 * 3, 3)),
])
def test_kernel_factorization_shapes_and_counts(shape, groups, rank, expected):
    f = factor_shape(shape, groups, rank, "kernel")
    assert (f.rows, f.cols, f.inner) == expected
    assert f.rows * f.cols == math.prod(shape)  # a plain reshape of the kernel
    c_out, c_in_g, k1, *rest = shape
    assert f.inner * (f.rows + f.cols) == rank * k1 * (c_out // groups * k1 + c_in_g * groups * math.prod(rest))
    flat = factor_shape(shape, groups, rank, "flat")
    assert (flat.rows, flat.cols, flat.inner) == (c_out, math.prod(shape[1:]), rank)


@pytest.mark.parametrize("conv", [nn.Conv1d(24, 24, 5), nn.Conv3d(8, 24, 3)], ids=["conv1d", "conv3d"])
def test_rank_capacity_of_nd_kernels(conv):
    """rank(ΔW_LoRA) ≤ r for the (C_out, C_in·Πk) matricization, while W ⊙ ΔW is full rank."""
    torch.manual_seed(0)
    cfg = dict(rank=2, alpha=2.0, factorization="flat")
    lora = randomize_(AdapterLayer(conv, AdapterConfig(composition="additive", **cfg)), scale=1.0)
    lie = randomize_(AdapterLayer(conv, AdapterConfig(**cfg)), scale=1.0)
    assert torch.linalg.matrix_rank(lora.get_delta_weight().flatten(1)).item() <= 2
    assert torch.linalg.matrix_rank(lie.get_delta_weight().flatten(1)).item() == 24


def test_transformers_conv1d_is_a_transposed_linear():
    """GPT-2's Conv1D stores (in, out): the adapter works in the (out, in) layout (DoRA per output feature)."""
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D  # the peft extra brings transformers

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 6), nn.GELU(), nn.Linear(12, 3))
    x = torch.randn(2, 4, 6)
    expected = model(x)
    model, report = apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, targets="all", post="dora"))
    layer = model[0]
    assert report.layers[0].kind == "Conv1D" and layer.lora_magnitude["default"].shape == (12,)
    assert layer.lora_B["default"].shape == (12, 2) and layer.lora_A["default"].shape == (2, 6)
    assert torch.allclose(model(x), expected, atol=1e-6)
    randomize_(layer, scale=0.3)
    w = reference_weight(layer)  # stored layout (in, out)
    assert w.shape == (6, 12)
    assert torch.allclose(layer(x), x @ w + layer.bias, atol=1e-5)
    assert torch.allclose(layer.weight, w, atol=1e-6)
    adapted = model(x)
    plain = merge_and_unload(model)
    assert type(plain[0]) is Conv1D and torch.allclose(plain(x), adapted, atol=1e-5)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                         nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.Conv2d(8, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def test_rank_and_alpha_patterns_match_like_peft():
    """First key (insertion order) matching the full name or a dotted suffix wins, as PEFT's get_pattern_key."""
    config = AdapterConfig(rank=2, alpha=4.0, targets="all", rank_pattern={r"[12]": 4, r"1": 1},
                           alpha_pattern={r"6": 1.0, r"\d": 3.0})
    _, report = apply_adapters(net(), config)
    rows = {layer.name: layer for layer in report.layers}
    assert {n: r.rank for n, r in rows.items()} == {"0": 2, "1": 4, "2": 4, "3": 2, "6": 2}
    assert {n: r.scaling for n, r in rows.items()} == {"0": 1.5, "1": 0.75, "2": 0.75, "3": 1.5, "6": 0.5}
    assert rows["1"].adapter_params == 4 * 7 * (1 * 7 + 8 * 7)  # r·k·(C_out/g·k + C_in·k)


def _mean_abs(*weights):
    return sum(float(w.abs().sum()) for w in weights) / sum(w.numel() for w in weights)


def test_weight_derived_scales_global_per_kind_per_layer():
    m = net()
    ws = {n: m.get_submodule(n).weight.detach() for n in ("0", "1", "2", "3", "6")}
    expected = {
        "auto": {n: 1 / _mean_abs(*ws.values()) for n in ws},
        "auto-kind": {"0": 1 / _mean_abs(ws["0"]), "1": 1 / _mean_abs(ws["1"], ws["2"]),
                      "2": 1 / _mean_abs(ws["1"], ws["2"]), "3": 1 / _mean_abs(ws["3"]), "6": 1 / _mean_abs(ws["6"])},
        "auto-layer": {n: 1 / _mean_abs(w) for n, w in ws.items()},
    }
    for rule, values in expected.items():
        _, report = apply_adapters(net(), AdapterConfig(rank=1, targets="all", alpha=rule))
        got = {layer.name: layer.scaling for layer in report.layers}
        assert got == pytest.approx(values, rel=1e-6), rule
    assert len(set(expected["auto-kind"].values())) == 4  # stem, depthwise 7x7 (two layers), 1x1, linear


def test_auto_scale_makes_the_lie_step_independent_of_the_weight_scale():
    """alpha/r = 1/mean|W|: the same factors move cW by the same absolute amount as W (like LoRA's step)."""
    steps = []
    for c in (1.0, 10.0):
        model = net()
        with torch.no_grad():
            model[1].weight.mul_(c)
        apply_adapters(model, AdapterConfig(rank=1, targets=["1"], alpha="auto-layer"))
        randomize_(model[1], scale=0.1, seed=3)
        steps.append(model[1].get_delta_weight())
    assert torch.allclose(steps[0], steps[1], rtol=1e-4, atol=1e-7)


def test_reset_adapters_recomputes_the_scale_from_newly_loaded_weights():
    model, report = apply_adapters(net(), AdapterConfig(rank=1, targets="spatial"))
    before = report.layers[0].scaling
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.base_layer.weight.mul_(4.0)  # "a checkpoint was loaded"
            randomize_(layer)
    x = torch.randn(1, 3, 16, 16)
    scalings = reset_adapters(model)
    assert list(scalings.values()) == pytest.approx([before / 4] * 3)
    assert all(float(layer.lora_scaling["default"]) == pytest.approx(before / 4)
               for layer in adapter_layers(model).values())
    plain = net()
    with torch.no_grad():
        for i in (0, 1, 2):
            plain[i].weight.mul_(4.0)
    assert torch.allclose(model(x), plain(x), atol=1e-5)  # identity again


def test_resolved_scale_is_saved_and_reproduces_the_model(tmp_path):
    model, _ = apply_adapters(net(), AdapterConfig(rank=1, targets="spatial", alpha="auto-kind"))
    for layer in adapter_layers(model).values():
        randomize_(layer, scale=0.05)
    x = torch.randn(1, 3, 16, 16)
    expected = model(x)
    path = save_adapter(model, tmp_path / "a.safetensors")
    # a base whose weights differ: "auto" on it alone would give other scales, the file's are used
    other = net()
    with torch.no_grad():
        other[1].weight.mul_(2.0)
    load_adapter(other, path)
    assert {n: float(layer.lora_scaling["default"]) for n, layer in adapter_layers(other).items()} == \
        {n: float(layer.lora_scaling["default"]) for n, layer in adapter_layers(model).items()}
    with torch.no_grad():
        other[1].base_layer.weight.div_(2.0)
    assert torch.allclose(other(x), expected, atol=1e-6)
    state = model.state_dict()  # Lightning / mmengine checkpoints carry it the same way
    assert all(k in state for k in ("0.lora_scaling.default", "1.lora_scaling.default"))


def test_anchored_pattern_keys_match_the_whole_name_only_as_in_peft():
    """PEFT: ``re.match(rf"(.*\\.)?({key})$", name)``: ``^fc`` is the top-level ``fc`` only, ``fc`` every ``*.fc``."""
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 4))
    model.add_module("blocks", nn.Sequential(nn.Module()))
    model.blocks[0].add_module("fc", nn.Linear(4, 4))
    ranks = {}
    for key in ("^fc", "fc", r"blocks\.0\.fc", "0.fc$"):
        _, report = apply_adapters(copy.deepcopy(model), AdapterConfig(rank=4, targets="all", rank_pattern={key: 1}))
        ranks[key] = {layer.name: layer.rank for layer in report.layers}
    assert ranks["^fc"] == {"fc": 1, "blocks.0.fc": 4}
    assert ranks["fc"] == {"fc": 1, "blocks.0.fc": 1}
    assert ranks[r"blocks\.0\.fc"] == ranks["0.fc$"] == {"fc": 4, "blocks.0.fc": 1}
