"""Adapter-only safetensors files: round trip, config and shape checks, missing / unexpected keys, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from liera_vision.core import (
    AdapterConfig,
    adapter_layers,
    adapter_state_dict,
    apply_adapters,
    get_adapter_config,
    load_adapter,
    read_adapter_file,
    save_adapter,
)
from tests.core.reference import randomize_

CONFIG = AdapterConfig(init="pissa", rank=4, modules_to_save=["head"])


def adapted_atto(atto_factory, config=CONFIG, seed=0):
    model, _ = apply_adapters(atto_factory(seed=seed), config)
    for layer in adapter_layers(model).values():
        randomize_(layer, scale=0.01)
    with torch.no_grad():
        model.head.fc.weight.add_(0.5)
    return model


def test_round_trip_into_a_fresh_model(atto_factory, tmp_path):
    model = adapted_atto(atto_factory)
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    path = save_adapter(model, tmp_path / "adapter.safetensors")

    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    assert AdapterConfig.from_json(meta["adapter_config"]) == CONFIG
    assert not any(k.endswith("base_layer.weight") for k in keys)  # adapter-only
    assert {"head.fc.weight", "head.norm.weight", "stem.0.lora_A", "stem.0.lora_B_start", "stem.0.lora_scaling"} <= keys
    base_params = sum(p.numel() for p in atto_factory().parameters())
    with safe_open(str(path), framework="pt") as fh:
        assert sum(fh.get_tensor(k).numel() for k in keys) < base_params / 2

    fresh = atto_factory(seed=0)  # same base weights, no adapters: load applies the file's config
    result = load_adapter(fresh, path)
    assert get_adapter_config(fresh) == CONFIG
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_adapter_state_dict_keys(atto_factory):
    state = adapter_state_dict(adapted_atto(atto_factory))
    assert all(".lora_" in k or k.startswith("head.") for k in state)


def test_config_mismatch_is_reported_by_field(atto_factory, tmp_path):
    path = save_adapter(adapted_atto(atto_factory), tmp_path / "a.safetensors")
    other, _ = apply_adapters(atto_factory(), AdapterConfig(method="lora", rank=4, modules_to_save=["head"]))
    with pytest.raises(ValueError, match=r"'composition': \('additive', 'taylor'\)"):
        load_adapter(other, path)


def _rewrite(path, out, edit):
    config, tensors = read_adapter_file(path)
    meta = {"format": "liera_vision.adapter", "format_version": "2", "adapter_config": config.to_json()}
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    return out


def test_shape_mismatch_names_the_key(atto_factory, tmp_path):
    path = save_adapter(adapted_atto(atto_factory), tmp_path / "a.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors",
                   lambda t: t.__setitem__("stem.0.lora_A", torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=r"tensor 'stem.0.lora_A' has shape \(3, 3\)"):
        load_adapter(atto_factory(), bad)


def test_missing_and_unexpected_keys(atto_factory, tmp_path):
    path = save_adapter(adapted_atto(atto_factory), tmp_path / "a.safetensors")

    def edit(t):
        t.pop("stem.0.lora_B")
        t["stem.9.lora_A"] = torch.zeros(1)

    bad = _rewrite(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ValueError, match=r"missing keys \['stem.0.lora_B'\], unexpected keys \['stem.9.lora_A'\]"):
        load_adapter(atto_factory(), bad)
    result = load_adapter(atto_factory(), bad, strict=False)
    assert result.missing_keys == ["stem.0.lora_B"] and result.unexpected_keys == ["stem.9.lora_A"]


def test_pickle_files_are_refused(atto_factory, tmp_path):
    model = adapted_atto(atto_factory)
    path = tmp_path / "adapter.pt"
    torch.save(adapter_state_dict(model), path)
    with pytest.raises(ValueError, match=r"adapter.pt: not a safetensors file .*pickled .pt/.bin files are refused"):
        load_adapter(atto_factory(), path)
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_adapter(atto_factory(), tmp_path / "nothere.safetensors")


def test_safetensors_without_adapter_metadata(tmp_path, atto_factory):
    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"hello": json.dumps(1)})
    with pytest.raises(ValueError, match=r"weights.safetensors: safetensors file without liera_vision adapter"):
        load_adapter(atto_factory(), path)


def test_loading_into_a_merged_model_is_refused(atto_factory, tmp_path):
    from liera_vision.core import merge_adapters

    model = adapted_atto(atto_factory)
    path = save_adapter(model, tmp_path / "a.safetensors")
    merge_adapters(model)
    with pytest.raises(ValueError, match="unmerge_adapters"):
        load_adapter(model, path)


def test_save_is_atomic(atto_factory, tmp_path, monkeypatch):
    """A failing write leaves the previous file intact and no temporary behind."""
    import safetensors.torch

    model = adapted_atto(atto_factory)
    path = save_adapter(model, tmp_path / "a.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_saved_file_has_the_usual_permissions(atto_factory, tmp_path):
    import os

    path = save_adapter(adapted_atto(atto_factory), tmp_path / "a.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
