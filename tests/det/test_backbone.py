"""LieRAConvNeXt: shapes, adapters, frozen stages, checkpoint loading (official / FCMAE / timm / URL), errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from liera_vision.core import adapter_layers, count_parameters
from liera_vision.core.compose import channel_norm
from liera_vision.det import LieRAConvNeXt, timm_to_plugin_key
from liera_vision.models import ARCHS, create_convnextv2, official_to_fcmae, timm_to_official

LIERA = dict(method="liera", rank=4)


def _features(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_output_strides_channels_and_out_indices():
    x = torch.randn(1, 3, 64, 96)
    full = LieRAConvNeXt("atto", adapter=LIERA)
    outs = _features(full, x)
    assert [o.shape[1] for o in outs] == list(ARCHS["atto"][1])
    assert [tuple(o.shape[2:]) for o in outs] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    partial = LieRAConvNeXt("convnextv2_atto", out_indices=(1, -1))
    assert partial.out_indices == (1, 3) and not hasattr(partial, "norm0")
    assert [o.shape[1] for o in _features(partial, x)] == [80, 320]


def test_adapters_train_and_base_is_frozen():
    model = LieRAConvNeXt("atto", adapter=LIERA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith("norm") for n in trainable)
    assert {n.rsplit(".", 1)[0] for n in trainable if "lora" in n} == set(adapter_layers(model))
    assert sorted(n for n in trainable if n.startswith("norm")) == [f"norm{i}.{k}" for i in range(4)
                                                                  for k in ("bias", "weight")]
    plain = LieRAConvNeXt("atto")
    assert count_parameters(plain).trainable == count_parameters(plain).total


def test_frozen_stages_freeze_adapters_and_stay_in_eval():
    model = LieRAConvNeXt("atto", adapter=LIERA, frozen_stages=2, drop_path_rate=0.1)
    model.train()
    for i in range(4):
        params = list(model.downsample_layers[i].parameters()) + list(model.stages[i].parameters())
        frozen = i < 2
        assert all(not p.requires_grad for p in params) == frozen
        assert any(p.requires_grad for p in params) == (not frozen)
        assert model.stages[i].training == (not frozen) and model.downsample_layers[i].training == (not frozen)
    assert model.norm0.weight.requires_grad


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="gigantic"), r"unknown ConvNeXt-V2 arch 'gigantic'"),
    (dict(out_indices=(0, 4)), r"out_indices must be distinct stage indices in 0\.\.3, got \(0, 4\)"),
    (dict(out_indices=(3, -1)), r"out_indices must be distinct"),
    (dict(frozen_stages=5), r"frozen_stages must be an integer in \[-1, 4\], got 5"),
    (dict(adapter=dict(method="liera", rnak=4)), r"invalid adapter config .*unknown AdapterConfig key\(s\) \['rnak'\]"),
    (dict(adapter=dict(method="ia3")), r"invalid adapter config .*method must be one of"),
    (dict(init_cfg=dict(type="Normal", std=0.01)), r"init_cfg must be None .* or dict\(type='Pretrained'"),
    (dict(init_cfg=dict(type="Pretrained", checkpoint="x.pt", map_location="cpu")),
     r"accepts only \['checkpoint', 'prefix', 'type'\] \(unknown: \['map_location'\]\)"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LieRAConvNeXt(**{"arch": "atto", **kwargs})


# --- checkpoints ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source():
    """A 'pretrained' atto (random weights, non-trivial GRN and norms) to write checkpoint files from."""
    torch.manual_seed(1)
    model = create_convnextv2("atto", num_classes=1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name or "norm" in name:
                p.normal_(0.5, 0.1)
    return model


def _write(source, fmt: str, path):
    if fmt == "official":  # the released layout: weights under 'model'
        torch.save({"model": timm_to_official(source), "epoch": 300}, path)
    elif fmt == "fcmae":
        torch.save({"model": official_to_fcmae(timm_to_official(source))}, path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path


def _assert_backbone_equals(model, source):
    own = model.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(("head.", "norm_pre.")):
            continue
        name = timm_to_plugin_key(key)
        if name not in own:
            module, _, leaf = name.rpartition(".")
            name = f"{module}.base_layer.{leaf}"
        assert torch.equal(own[name], value), name


@pytest.mark.parametrize("fmt, suffix", [("official", ".pt"), ("fcmae", ".pt"), ("timm", ".safetensors")])
def test_init_cfg_loads_every_backbone_tensor(source, fmt, suffix, tmp_path):
    path = _write(source, fmt, tmp_path / f"ckpt{suffix}")
    model = LieRAConvNeXt("atto", adapter=LIERA, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    model.init_weights()
    assert model.is_init
    _assert_backbone_equals(model, source)


@pytest.mark.parametrize("adapter", [dict(method="liera", rank=4), dict(method="lora", rank=4),
                                     dict(method="liera", rank=4, variant="dora"),
                                     dict(method="liera", rank=4, variant="pissa")])
def test_adapted_backbone_starts_as_the_pretrained_one(source, adapter, tmp_path):
    """After loading, every adapter starts at the identity, DoRA / PiSSA initialised from the loaded W."""
    path = _write(source, "official", tmp_path / "ckpt.pt")
    init_cfg = dict(type="Pretrained", checkpoint=str(path))
    plain = LieRAConvNeXt("atto", init_cfg=init_cfg)
    adapted = LieRAConvNeXt("atto", adapter=adapter, init_cfg=init_cfg)
    for m in (plain, adapted):
        m.init_weights()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(_features(adapted, x), _features(plain, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    layers = adapter_layers(adapted)
    for layer in layers.values():
        w = layer.base_layer.weight
        if adapter.get("variant") == "dora":
            torch.testing.assert_close(layer.dora_magnitude, channel_norm(w))
        if adapter.get("variant") == "pissa":
            matrix = w.reshape(layer.factors.rows, layer.factors.cols).double()
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            k = min(layer.factors.inner, s.numel())
            principal = (u[:, :k] * s[:k]) @ vh[:k]
            got = layer.scaling * (layer.pissa_B0 @ layer.pissa_A0).double()
            torch.testing.assert_close(got, principal, rtol=1e-4, atol=1e-5)


def test_url_checkpoint_is_read_from_the_torch_hub_cache(source, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    _write(source, "official", cache / "convnextv2_atto_1k_224_ema.pt")

    def no_network(*args, **kwargs):
        raise AssertionError("the cached file must be used, not downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_atto_1k_224_ema.pt"
    model = LieRAConvNeXt("atto", adapter=LIERA, init_cfg=dict(type="Pretrained", checkpoint=url))
    model.init_weights()
    _assert_backbone_equals(model, source)


def test_checkpoint_errors_name_the_file(source, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"pretrained checkpoint .*nope\.pt does not exist"):
        LieRAConvNeXt("atto", init_cfg=dict(type="Pretrained", checkpoint=str(missing))).init_weights()
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.layer1.weight": torch.zeros(2)}}, other)
    # an FCMAE-looking prefix but nothing that maps onto the backbone: never a silent no-op
    with pytest.raises(ValueError, match=r"other\.pt: "):
        LieRAConvNeXt("atto", init_cfg=dict(type="Pretrained", checkpoint=str(other))).init_weights()
    femto = _write(create_convnextv2("femto"), "official", tmp_path / "femto.pt")
    with pytest.raises(ValueError, match=r"femto\.pt: .* has shape .* \(wrong arch\?\)"):
        LieRAConvNeXt("atto", init_cfg=dict(type="Pretrained", checkpoint=str(femto))).init_weights()


def test_zero_weights_are_judged_on_the_loaded_checkpoint(source, tmp_path):
    """The random weights at build time are replaced by init_weights: the warning names the loaded zeros."""
    state = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    state["stages.1.blocks.0.conv_dw.weight"][:4] = 0  # 4 of 80 channels: 196 of 3,920 entries
    path = tmp_path / "zeros.safetensors"
    save_file(state, str(path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*exactly zero")  # no zero warning at build time
        model = LieRAConvNeXt("atto", adapter=LIERA, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.warns(UserWarning, match=r"layer 'stages\.1\.0\.conv_dw': 196 of 3,920 \(5\.0000%\)"):
        model.init_weights()
