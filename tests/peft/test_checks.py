"""What the bridge refuses, and how it says so: corrupted adapter folders (core's rule: finite tensors, positive
``lora_scaling``) before anything is loaded, invalid regexes at config construction, several adapters at once,
``add_weighted_adapter``; and what transformers' own PEFT integration does with a LieRA adapter (documented in
docs/peft.md as not working with transformers 5 + PEFT 0.21)."""

from __future__ import annotations

import copy
import json
import pickle

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from liera_vision.peft import LieRAConfig, LieRALayer, peft_to_liera
from liera_vision.peft.model import AdapterConfigs

WEIGHTS = "adapter_model.safetensors"
CORRUPTIONS = {  # name: (key in the saved file, new value, words the error must contain)
    "negative scaling": ("base_model.model.0.lora_scaling", -3.0, "must be positive, got -3.0"),
    "zero scaling": ("base_model.model.0.lora_scaling", 0.0, "must be positive, got 0.0"),
    "nan A": ("base_model.model.2.lora_A", float("nan"), "NaN / inf"),
    "inf B": ("base_model.model.0.lora_B", float("inf"), "NaN / inf"),
    "nan magnitude": ("base_model.model.2.lora_magnitude", float("nan"), "NaN / inf"),
    "nan module to save": ("base_model.model.1.weight", float("nan"), "NaN / inf"),
}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def corrupted(request, tmp_path):
    """A saved DoRA adapter (with a module to save) whose tensor ``key`` is overwritten with ``value``."""
    key, value, words = CORRUPTIONS[request.param]
    folder = tmp_path / "adapter"
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules=["0", "2"], post="dora",
                                                   modules_to_save=["1"]))
    model.save_pretrained(folder)
    tensors = load_file(folder / WEIGHTS)
    assert key in tensors, sorted(tensors)
    tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, folder / WEIGHTS)
    return folder, key, words


@pytest.mark.parametrize("corrupted", list(CORRUPTIONS), indirect=True)
def test_from_pretrained_refuses_a_corrupted_folder_before_touching_the_model(corrupted):
    folder, key, words = corrupted
    base = net()
    before = state(base)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors") as err:
        peft.PeftModel.from_pretrained(base, folder)
    assert key in str(err.value) and words in str(err.value) and str(folder) in str(err.value)
    assert not any(isinstance(m, LieRALayer) for m in base.modules())  # nothing was injected
    assert same(state(base), before)


@pytest.mark.parametrize("corrupted", ["negative scaling", "nan A"], indirect=True)
def test_load_adapter_refuses_a_corrupted_folder_and_keeps_the_model(corrupted):
    folder, key, words = corrupted
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules=["0", "2"], post="dora",
                                                   modules_to_save=["1"]))
    before, configs = state(model), dict(model.peft_config)
    with pytest.raises(ValueError, match="NaN / inf|must be positive") as err:
        model.load_adapter(folder, adapter_name="other")
    assert key in str(err.value) and str(folder) in str(err.value)
    assert dict(model.peft_config) == configs and model.active_adapters == ["default"]
    assert same(state(model), before)


@pytest.mark.parametrize("corrupted", ["zero scaling", "inf B"], indirect=True)
def test_every_peft_load_route_checks_the_tensors(corrupted):
    """A config given explicitly (PEFT then never reads the folder's config) and set_peft_model_state_dict go through
    the tuner's load hook, which refuses before load_state_dict copies anything."""
    folder, key, words = corrupted
    config = LieRAConfig.from_peft_type(**json.loads((folder / "adapter_config.json").read_text()))
    with pytest.raises(ValueError, match="LieRA adapter 'default' being loaded") as err:
        peft.PeftModel.from_pretrained(net(), folder, config=config)
    assert key in str(err.value) and words in str(err.value)
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules=["0", "2"], post="dora", modules_to_save=["1"]))
    before = state(model)
    with pytest.raises(ValueError, match=words.replace("/", ".")):
        peft.set_peft_model_state_dict(model, load_file(folder / WEIGHTS))
    assert same(state(model), before)


@pytest.mark.parametrize("corrupted", ["negative scaling", "nan magnitude"], indirect=True)
def test_conversion_refuses_a_corrupted_folder(corrupted, tmp_path):
    folder, key, words = corrupted
    target = tmp_path / "adapter.safetensors"
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors") as err:
        peft_to_liera(folder, target)
    assert key in str(err.value) and words in str(err.value)
    assert not target.exists()


def test_a_healthy_folder_still_loads_and_matches(tmp_path):
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules=["0", "2"], post="dora", modules_to_save=["1"]))
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, LieRALayer)):
            layer.lora_B["default"].normal_()
    model.save_pretrained(tmp_path)
    x = torch.randn(3, 4)
    loaded = peft.PeftModel.from_pretrained(net(), tmp_path)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
def test_an_invalid_regex_is_refused_at_construction_naming_the_field(field, tmp_path):
    with pytest.raises(ValueError, match=rf"LieRAConfig\.{field}: '\(' is not a valid regex"):
        LieRAConfig(r=1, **{field: "("})
    assert getattr(LieRAConfig(r=1, **{field: ["("]}), field) == ["("]  # a list holds names, not regexes
    config = LieRAConfig(r=1, target_modules="0").to_dict()  # a saved config with a bad regex is refused on reading
    config[field] = "["
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"LieRAConfig\.{field}: '\[' is not a valid regex"):
        LieRAConfig.from_pretrained(tmp_path)


def test_several_adapters_at_once_get_lieras_explanation_at_the_peft_model_level():
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules="all"))
    model.add_adapter("b", LieRAConfig(r=1, target_modules="all"))
    assert isinstance(model.peft_config, AdapterConfigs) and model.base_model.model.peft_config is model.peft_config
    for call in (model.set_adapter, model.base_model.set_adapter):
        with pytest.raises(ValueError, match="exactly one adapter"):
            call(["default", "b"])
    assert model.active_adapters == ["default"]
    assert "b" in model.peft_config and "c" not in model.peft_config
    model.set_adapter("b")
    assert model.active_adapters == ["b"]
    clone = copy.deepcopy(model)  # the dict subclass copies and pickles like a dict
    assert isinstance(clone.peft_config, AdapterConfigs) and list(clone.peft_config) == ["default", "b"]
    assert pickle.loads(pickle.dumps(model.peft_config)) == model.peft_config


def test_add_weighted_adapter_is_refused():
    model = peft.get_peft_model(net(), LieRAConfig(r=1, target_modules="all"))
    model.add_adapter("b", LieRAConfig(r=1, target_modules="all"))
    with pytest.raises(NotImplementedError, match="add_weighted_adapter is not supported for LieRA"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "w")
    assert sorted(model.peft_config) == ["b", "default"]


def test_transformers_own_peft_integration_does_not_load_liera_with_these_versions(tmp_path):
    """docs/peft.md: transformers' model.load_adapter / add_adapter do not work with LieRA (transformers 5 needs PEFT
    >= 0.22 for add_adapter and reads ``peft_type.value``, an enum member's attribute, in load_adapter); use PEFT's
    PeftModel.from_pretrained / get_peft_model, which this test also shows working on the same model. When this test
    fails, transformers or PEFT changed: revisit the docs."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32, bos_token_id=0,
                                     eos_token_id=0)

    def gpt2():
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()

    model = peft.get_peft_model(gpt2(), LieRAConfig(r=2, target_modules=["c_attn"]))
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    loaded = peft.PeftModel.from_pretrained(gpt2(), tmp_path)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(AttributeError, match="'str' object has no attribute 'value'"):
        gpt2().load_adapter(str(tmp_path))
    with pytest.raises(ValueError, match=r"0\.22"):
        gpt2().add_adapter(LieRAConfig(r=2, target_modules=["c_attn"]))
