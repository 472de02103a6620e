"""Artefacts written by liera-vision 0.1.0 (tests/legacy/v0_1_0, made by tests/legacy/make_fixtures.py)
keep loading and keep their meaning: configs (as stored in adapter files, Lightning hyper-parameters,
detector checkpoint metadata and result files), their labels, and adapter files with their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from liera_vision.core import AdapterConfig, adapter_layers, get_adapter_config, load_adapter, read_adapter_file
from tests.legacy.make_fixtures import CONFIGS, tiny_net

FIXTURES = Path(__file__).resolve().parents[1] / "legacy" / "v0_1_0"
STORED = json.loads((FIXTURES / "configs.json").read_text())


@pytest.mark.parametrize("label", list(STORED))
def test_stored_configs_load_with_the_same_meaning_and_label(label):
    old = STORED[label]
    config = AdapterConfig.from_dict(old["to_dict"])
    assert config.name == old["name"]  # run folders and reports use these labels
    assert config.scaling == old["scaling"]  # 0.1.0's alpha=None meant alpha = rank
    assert config.rank == old["to_dict"]["rank"] and config.factorization == old["to_dict"]["factorization"]
    assert AdapterConfig.from_dict(config.to_dict()) == config  # and it round-trips in today's format


@pytest.mark.parametrize("label", list(CONFIGS))
def test_adapter_files_reproduce_their_outputs(label):
    config, tensors = read_adapter_file(FIXTURES / f"{label}.adapter")
    assert not any(k.endswith(("pissa_A0", "pissa_B0", "dora_magnitude")) for k in tensors)  # mapped to today's names
    model = tiny_net()
    load_adapter(model, FIXTURES / f"{label}.adapter")
    io = load_file(str(FIXTURES / f"{label}.io"))
    with torch.no_grad():
        assert torch.allclose(model(io["input"]), io["output"], atol=1e-6), label
    assert get_adapter_config(model).name == STORED[label]["name"]
    assert {round(float(layer.lora_scaling["default"]), 6) for layer in adapter_layers(model).values()} == \
        {STORED[label]["scaling"]}


def test_legacy_state_dict_keys_load_into_an_adapted_layer():
    """A 0.1.0 state dict (Lightning / mmengine checkpoints hold the layer's own keys: lora_A, pissa_A0 …)
    loads into today's layer, whose only adapter takes the tensors; the scale stays the config's."""
    raw = load_file(str(FIXTURES / "pissa-liera.adapter"))
    state = {k.removeprefix("dw."): v for k, v in raw.items() if k.startswith("dw.")}
    assert set(state) == {"lora_A", "lora_B", "pissa_A0", "pissa_B0"}
    model = tiny_net()
    load_adapter(model, FIXTURES / "pissa-liera.adapter")
    expected = model.dw.effective_weight().detach()
    fresh = tiny_net()
    load_adapter(fresh, FIXTURES / "pissa-liera.adapter")
    with torch.no_grad():
        fresh.dw.lora_A["default"].zero_()
    base = {f"base_layer.{k}": v for k, v in model.dw.base_layer.state_dict().items()}
    fresh.dw.load_state_dict({**base, **state})
    assert torch.equal(fresh.dw.lora_B_start["default"], model.dw.lora_B_start["default"])
    assert torch.equal(fresh.dw.effective_weight().detach(), expected)


def test_legacy_state_dict_keeps_its_scale_when_the_config_was_rebuilt_as_auto():
    """LightningCLI rebuilds a 0.1.0 checkpoint's config with AdapterConfig(**hparams): its alpha=None then
    reads as today's "auto"; the 0.1.0 state dict (no lora_scaling) still gets 0.1.0's alpha = rank."""
    from liera_vision.core import AdapterLayer

    layer = AdapterLayer(torch.nn.Linear(6, 4), AdapterConfig(method="liera", rank=2))
    assert layer.settings["default"].alpha == "auto" and float(layer.lora_scaling["default"]) != 1.0
    legacy = {"base_layer.weight": layer.base_layer.weight.detach(), "base_layer.bias": layer.base_layer.bias.detach(),
              "lora_A": torch.ones(2, 6), "lora_B": torch.ones(4, 2)}
    layer.load_state_dict(legacy)
    assert float(layer.lora_scaling["default"]) == 1.0
    assert torch.allclose(layer.delta(), torch.full((4, 6), 2.0))
