"""Conversion between liera-vision adapter files and PEFT folders: lossless both ways, 0.1.0 files included;
the CLI is a thin wrapper with one-line errors."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    adapter_layers,
    apply_adapters,
    load_adapter,
    read_adapter_file,
    save_adapter,
)
from liera_vision.peft import liera_to_peft, peft_to_liera
from liera_vision.peft.convert import main
from tests.core.reference import randomize_
from tests.legacy.make_fixtures import CONFIGS, tiny_net

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / "tests" / "legacy" / "v0_1_0"
STORED = json.loads((LEGACY / "configs.json").read_text())


@pytest.mark.parametrize("label", list(CONFIGS))
def test_legacy_files_load_in_peft_with_their_outputs(label, tmp_path):
    """liera-vision 0.1.0 adapter files (LieRA Taylor / exp, LoRA, DoRA, PiSSA, flat with dropout; no per-layer
    scale stored) become PEFT folders that reproduce their recorded outputs."""
    folder = liera_to_peft(LEGACY / f"{label}.adapter", tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LIERA" and config["target_modules"] == "dw|head|pw|stem".replace("|head", "")
    assert config["modules_to_save"] == ["head"]
    weights = load_file(str(folder / "adapter_model.safetensors"))
    assert all(key.startswith("base_model.model.") for key in weights)
    assert float(weights["base_model.model.dw.lora_scaling"]) == pytest.approx(STORED[label]["scaling"])
    model = peft.PeftModel.from_pretrained(tiny_net(), folder)  # in eval mode, as PEFT loads for inference
    core = tiny_net()
    load_adapter(core, LEGACY / f"{label}.adapter")
    io = load_file(str(LEGACY / f"{label}.io"))
    with torch.no_grad():
        assert torch.allclose(model(io["input"]), core.eval()(io["input"]), atol=1e-6)
        if not CONFIGS[label].get("dropout"):  # the .io of a dropout config was recorded with rank dropout active
            assert torch.allclose(model(io["input"]), io["output"], atol=1e-6)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                         nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("config", [
    AdapterConfig(rank=2, alpha="auto-kind", targets="all", modules_to_save=["5"]),
    AdapterConfig(rank=2, composition="exp", init="pissa", post="dora", targets="spatial", rank_pattern={"1": 1}),
    AdapterConfig(rank=1, composition="additive", factorization="flat", targets=["0", "2"]),
], ids=["taylor-auto-kind", "pissa-dora-exp", "lora-flat"])
def test_round_trip_file_to_peft_and_back_is_lossless(config, tmp_path):
    x = torch.randn(2, 3, 16, 16)
    model, _ = apply_adapters(net(), config)
    for layer in adapter_layers(model).values():
        randomize_(layer, scale=0.2)
    expected = model(x)
    source = save_adapter(model, tmp_path / "a.safetensors")
    folder = liera_to_peft(source, tmp_path / "peft", base_model_name_or_path="tiny")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    loaded = peft.PeftModel.from_pretrained(net(), folder)
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    back = peft_to_liera(folder, tmp_path / "b.safetensors")
    (config_a, tensors_a), (config_b, tensors_b) = read_adapter_file(source), read_adapter_file(back)
    assert tensors_a.keys() == tensors_b.keys() and all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    same = {k: v for k, v in config_a.to_dict().items() if k != "targets"}
    assert {k: v for k, v in config_b.to_dict().items() if k != "targets"} == same
    fresh = net()
    load_adapter(fresh, back)
    assert sorted(adapter_layers(fresh)) == sorted(adapter_layers(model))
    assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_peft_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no adapter_config.json \(expected a folder written by"):
        peft_to_liera(tmp_path, tmp_path / "a.safetensors")
    lora = peft.get_peft_model(net(), peft.LoraConfig(r=1, target_modules=["2"]))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"adapter_config.json: peft_type 'LORA'; only LieRA adapters"):
        peft_to_liera(tmp_path / "lora", tmp_path / "a.safetensors")
    (tmp_path / "lora" / "adapter_model.safetensors").rename(tmp_path / "lora" / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"only a pickled adapter_model.bin, which is refused"):
        peft_to_liera(tmp_path / "lora", tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


def test_liera_file_errors_name_the_path(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=r"plain.safetensors: safetensors file without liera_vision adapter metadata"):
        liera_to_peft(tmp_path / "plain.safetensors", tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"file is a file; liera_to_peft writes a PEFT adapter folder"):
        liera_to_peft(LEGACY / "lora.adapter", tmp_path / "file")


def test_cli_converts_both_ways_and_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    assert main([str(LEGACY / "lora.adapter"), str(tmp_path / "peft")]) == 0
    assert main([str(tmp_path / "peft"), str(tmp_path / "lora.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    config, _ = read_adapter_file(tmp_path / "lora.safetensors")
    assert config.name == "lora-r2" and config.targets == ["dw", "pw", "stem"]
    assert main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convert_adapter.py: error: ") and err.count("\n") == 1 and "does not exist" in err
    monkeypatch.setattr(sys, "argv", ["convert_adapter.py", str(LEGACY / "lora.adapter"), str(tmp_path / "again")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "tools" / "convert_adapter.py"), run_name="__main__")
    assert exit_.value.code == 0 and (tmp_path / "again" / "adapter_model.safetensors").is_file()
