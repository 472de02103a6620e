"""LieRAConvNeXt: shapes, adapters, frozen stages, loading official / FCMAE / timm / detector checkpoints, errors."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from safetensors.torch import save_file

from liera_vision.core import adapter_layers, count_parameters, get_adapter_config
from liera_vision.core.compose import channel_norm
from liera_vision.det import LieRAConvNeXt
from liera_vision.det.backbone import _Trunk
from liera_vision.errors import CheckpointWarning, ZeroWeightWarning
from liera_vision.models import ARCHS, create_convnextv2

from ..models.layouts import fcmae_dense_state, official_state, official_to_fcmae, one_thread  # noqa: F401

LIERA = dict(method="liera", rank=4)


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_stages_after_the_last_output_are_not_built():
    model = LieRAConvNeXt("atto", out_indices=(0, 1, 2), adapter=LIERA)
    assert model.num_stages == 3 and len(model.stages) == 3 and len(model.downsample_layers) == 3
    assert not any(k.startswith(("stages.3.", "downsample_layers.3.", "norm3.")) for k in model.state_dict())
    assert not any(name.startswith("stages.3.") for name in adapter_layers(model))
    assert [o.shape[1] for o in _features(model, torch.randn(1, 3, 64, 64))] == [40, 80, 160]


def test_adapters_train_and_base_is_frozen():
    model = LieRAConvNeXt("atto", adapter=LIERA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    assert all(".lora_A." in n or ".lora_B." in n or n.startswith("norm") for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable if ".lora_" in n} == set(adapter_layers(model))
    assert sorted(n for n in trainable if n.startswith("norm")) == [f"norm{i}.{k}" for i in range(4)
                                                                  for k in ("bias", "weight")]
    assert get_adapter_config(model).name == "liera-taylor-r4" and "adapter" not in vars(model)
    plain = LieRAConvNeXt("atto")
    assert count_parameters(plain).trainable == count_parameters(plain).total
    assert get_adapter_config(plain) is None


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


OUT_INDICES = [c for n in range(1, 5) for c in itertools.combinations(range(4), n)]  # all 15


@pytest.mark.parametrize("adapter", [LIERA, None], ids=["liera", "full"])
def test_every_trainable_parameter_gets_a_gradient(adapter, monkeypatch):
    """No trainable parameter outside the graph (DDP's find_unused_parameters=False) for any
    out_indices x frozen_stages: one backward reaches every parameter that requires a gradient."""
    import copy

    from liera_vision.det import backbone

    net = create_convnextv2("atto", num_classes=0)  # built once: timm's init is most of the build time
    monkeypatch.setattr(backbone, "create_convnextv2", lambda *args, **kwargs: copy.deepcopy(net))
    x = torch.randn(1, 3, 32, 32)
    for out_indices, frozen in itertools.product(OUT_INDICES, range(-1, 5)):
        model = LieRAConvNeXt("atto", out_indices=out_indices, frozen_stages=frozen, adapter=adapter).train()
        assert len(model.stages) == len(model.downsample_layers) == max(out_indices) + 1
        sum(o.sum() for o in model(x)).backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        unreached = [n for n, p in trainable if p.grad is None]
        assert trainable and not unreached, (out_indices, frozen, unreached[:5])
        frozen_built = min(max(frozen, 0), len(model.stages))
        assert all(not p.requires_grad for i in range(frozen_built)
                   for p in [*model.stages[i].parameters(), *model.downsample_layers[i].parameters()])
        assert {n.split(".")[0] for n, _ in trainable if n.startswith("norm")} == {f"norm{i}" for i in out_indices}


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="gigantic"), r"unknown ConvNeXt-V2 arch 'gigantic'"),
    (dict(out_indices=(0, 4)), r"out_indices must be distinct stage indices in 0\.\.3, got \(0, 4\)"),
    (dict(out_indices=(3, -1)), r"out_indices must be distinct"),
    (dict(frozen_stages=5), r"frozen_stages must be an integer in \[-1, 4\], got 5"),
    (dict(adapter=dict(method="liera", rnak=4)), r"invalid adapter config .*unknown AdapterConfig key\(s\) \['rnak'\]"),
    (dict(adapter=dict(method="ia3")), r"invalid adapter config .*method"),
    (dict(init_cfg=dict(type="Normal", std=0.01)), r"init_cfg must be None .* or dict\(type='Pretrained'"),
    (dict(init_cfg=dict(type="Pretrained", checkpoint="x.pt", map_location="cpu")),
     r"accepts only \['checkpoint', 'prefix', 'type'\] \(unknown: \['map_location'\]\)"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LieRAConvNeXt(**{"arch": "atto", **kwargs})


# --- official / FCMAE / timm checkpoints ---------------------------------------------------------------
@pytest.fixture(scope="module")
def source():
    """A 'pretrained' atto (random weights, non-trivial GRN and norms) to write checkpoint files from."""
    torch.manual_seed(1)
    model = create_convnextv2("atto", num_classes=1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name or "norm" in name:
                p.normal_(0.5, 0.1)
            elif p.dim() == 4:
                p.mul_(1.5)  # a mean|W| unlike timm's random init: the weight-derived scale must follow the file
    return model


def _write(source, fmt: str, path):
    if fmt == "official":  # the released fine-tuned layout: weights under 'model'
        torch.save({"model": official_state(source), "epoch": 300}, path)
    elif fmt == "fcmae":  # the released pre-training layout: GRN (1, C), decoder keys
        torch.save({"model": fcmae_dense_state(source, grn="2d", decoder=True)}, path)
    elif fmt == "fcmae-sparse":
        torch.save({"model": official_to_fcmae(official_state(source))}, path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path


def _base_view(model) -> dict[str, torch.Tensor]:
    """The backbone's own tensors under base names (an adapted conv's ``base_layer.`` folded away)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()
            if not any(f".{t}." in k for t in ("lora_A", "lora_B", "lora_magnitude", "lora_A_start", "lora_B_start",
                                                "lora_scaling")) and not k.startswith("norm")}


def _assert_backbone_equals(model, source):
    expected = _Trunk(source, model.num_stages).state_dict()
    got = _base_view(model)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("fmt, suffix", [("official", ".pt"), ("fcmae", ".pt"), ("fcmae-sparse", ".pt"),
                                         ("timm", ".safetensors")])
def test_init_cfg_loads_every_backbone_tensor(source, fmt, suffix, tmp_path):
    path = _write(source, fmt, tmp_path / f"ckpt{suffix}")
    model = LieRAConvNeXt("atto", adapter=LIERA, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    result = model.load_pretrained(str(path))
    assert result.format == {"fcmae-sparse": "fcmae"}.get(fmt, fmt) and result.adapters == "initialised"
    assert result.unexpected == [] and result.fresh == [f"norm{i}.{k}" for i in range(4) for k in ("weight", "bias")]
    if fmt.startswith("fcmae"):
        assert "dropped pre-training tensors (15): decoder.* (10), mask_token, pred.* (2), proj.* (2)" in str(result)
    else:
        assert result.dropped == {"not part of a detection backbone": ["head.norm.bias", "head.norm.weight"]}
    _assert_backbone_equals(model, source)


def test_later_stage_keys_of_a_checkpoint_are_dropped_on_purpose(source, tmp_path):
    path = _write(source, "official", tmp_path / "ckpt.pt")
    model = LieRAConvNeXt("atto", out_indices=(0, 1, 2), adapter=LIERA,
                          init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        model.init_weights()
    _assert_backbone_equals(model, source)
    result = LieRAConvNeXt("atto", out_indices=(0, 1, 2)).load_pretrained(str(path))
    dropped = result.dropped["stage not built: out_indices=(0, 1, 2)"]
    assert dropped[0].startswith(("downsample_layers.3.", "stages.3.")) and len(dropped) == 4 + 2 * 10


@pytest.mark.parametrize("adapter", [dict(method="liera", rank=4), dict(method="lora", rank=4),
                                     dict(method="liera", rank=4, variant="dora"),
                                     dict(method="liera", rank=4, variant="pissa"),
                                     dict(method="liera", rank=4, init="pissa", post="dora")])
def test_adapted_backbone_starts_as_the_pretrained_one(source, adapter, tmp_path):
    """After loading, every adapter starts at the identity, DoRA / PiSSA / the Lie scale derived from the loaded W."""
    path = _write(source, "official", tmp_path / "ckpt.pt")
    init_cfg = dict(type="Pretrained", checkpoint=str(path))
    plain = LieRAConvNeXt("atto", init_cfg=init_cfg)
    adapted = LieRAConvNeXt("atto", adapter=adapter, init_cfg=init_cfg)
    built_scale = {n: float(layer.lora_scaling["default"]) for n, layer in adapter_layers(adapted).items()}
    for m in (plain, adapted):
        m.init_weights()
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(_features(adapted, x), _features(plain, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    layers = adapter_layers(adapted)
    config = get_adapter_config(adapted)
    scales = {n: float(layer.lora_scaling["default"]) for n, layer in layers.items()}
    if config.alpha == "auto":  # alpha / rank = 1 / mean|W| over the loaded adapted weights
        weights = [layer.base_layer.weight.detach() for layer in layers.values()]
        expected = sum(w.numel() for w in weights) / float(sum(w.double().abs().sum() for w in weights))
        assert all(abs(v - expected) <= 1e-6 * expected for v in scales.values())
        assert all(abs(v - expected) > 1e-3 * expected for v in built_scale.values())  # not the build-time value
    for layer in layers.values():
        w = layer.base_layer.weight.detach()
        if config.post == "dora":
            torch.testing.assert_close(layer.lora_magnitude["default"].detach(), channel_norm(w))
        if config.init == "pissa":
            f = layer.settings["default"].factors
            u, sv, vh = torch.linalg.svd(w.reshape(f.rows, f.cols).double(), full_matrices=False)
            k = min(f.inner, sv.numel())
            principal = (u[:, :k] * sv[:k]) @ vh[:k]
            got = scales[layer.layer_name] * (layer.lora_B_start["default"] @ layer.lora_A_start["default"]).double()
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
        warnings.simplefilter("error", ZeroWeightWarning)  # no zero warning at build time
        model = LieRAConvNeXt("atto", adapter=LIERA, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.warns(ZeroWeightWarning, match=r"layer 'stages\.1\.0\.conv_dw': 196 of 3,920 \(5\.0000%\)"):
        model.init_weights()


# --- detector checkpoints: this backbone's own tensors under 'backbone.' ----------------------------------
def _detector(adapter=None, out_indices=(0, 1, 2, 3), seed=2):
    """A 'trained' LieRAConvNeXt: random base, norms and (when adapted) adapters away from the identity."""
    torch.manual_seed(seed)
    model = LieRAConvNeXt("atto", out_indices=out_indices, adapter=adapter)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("norm") or ".lora_B." in name or "grn" in name:
                p.normal_(0.3, 0.2)
    return model


def _save_detector(backbone, path, drop=(), rename=None):
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if not k.startswith(drop or ("\0",))}
    if rename:
        state = {rename(k): v for k, v in state.items() if rename(k)}
    state.update({"neck.lateral_convs.0.conv.weight": torch.randn(256, 40, 1, 1), "neck.fpn_convs.0.conv.bias":
                  torch.zeros(256), "rpn_head.rpn_cls.weight": torch.randn(3, 256, 1, 1)})
    torch.save({"meta": {"epoch": 12, "dataset_meta": {"classes": ("person",)}}, "state_dict": state}, path)
    return path


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


DORA = dict(method="liera", rank=4, variant="dora", alpha=8)
PISSA_LORA = dict(method="lora", rank=4, init="pissa")


@pytest.mark.parametrize("adapter, prefix", [  # mmengine treats both prefix spellings alike
    (None, "backbone."), (None, "backbone"), (LIERA, "backbone."), (LIERA, "backbone"), (DORA, "backbone"),
    (PISSA_LORA, "backbone.")], ids=["plain-dot", "plain", "liera-dot", "liera", "dora", "pissa-lora-dot"])
def test_detector_checkpoint_loads_every_backbone_tensor(adapter, prefix, tmp_path):
    """Issue 9 §C: norms and adapters included; the outputs are exactly the source backbone's."""
    source = _detector(adapter)
    path = _save_detector(source, tmp_path / "epoch_12.pth")
    target = LieRAConvNeXt("atto", adapter=adapter, init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                                                   prefix=prefix))
    assert not all(torch.equal(a, b) for a, b in zip(_features(target, X), _features(source, X)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        result = target.load_pretrained(str(path), prefix=prefix)
    assert result.format == "LieRAConvNeXt" and result.fresh == [] and result.unexpected == []
    assert result.adapters == ("loaded" if adapter else "none") and result.dropped == {}
    assert sorted(result.loaded) == sorted(target.state_dict())
    for a, b in zip(_features(target, X), _features(source, X), strict=True):
        assert torch.equal(a, b)


def test_plain_detector_checkpoint_into_an_adapted_backbone_starts_at_the_identity(tmp_path):
    source = _detector(None)
    path = _save_detector(source, tmp_path / "plain.pth")
    target = LieRAConvNeXt("atto", adapter=LIERA)
    assert target.load_pretrained(str(path), prefix="backbone").adapters == "initialised"
    for a, b in zip(_features(target, X), _features(source, X), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_legacy_adapter_names_load(tmp_path):
    """A detector checkpoint of 0.1.0 (``conv_dw.lora_A`` without an adapter name, no scaling buffer) loads."""
    adapter = dict(method="liera", rank=4, alpha=16)
    source = _detector(adapter)

    def legacy(key):
        if key.endswith(".lora_scaling.default"):
            return None
        return key.replace(".lora_A.default", ".lora_A").replace(".lora_B.default", ".lora_B")

    path = _save_detector(source, tmp_path / "old.pth", rename=legacy)
    assert any(k.endswith("conv_dw.lora_A") for k in torch.load(path, weights_only=True)["state_dict"])
    target = LieRAConvNeXt("atto", adapter=adapter)
    assert target.load_pretrained(str(path), prefix="backbone.").adapters == "loaded"
    for a, b in zip(_features(target, X), _features(source, X), strict=True):
        assert torch.equal(a, b)


def test_detector_checkpoint_with_more_stages_into_fewer_out_indices(tmp_path):
    source = _detector(LIERA)
    path = _save_detector(source, tmp_path / "four.pth")
    target = LieRAConvNeXt("atto", out_indices=(0, 1, 2), adapter=LIERA)
    result = target.load_pretrained(str(path), prefix="backbone")
    assert sorted(result.dropped) == ["output norm not returned: out_indices=(0, 1, 2)",
                                      "stage not built: out_indices=(0, 1, 2)"]
    assert result.dropped["output norm not returned: out_indices=(0, 1, 2)"] == ["norm3.bias", "norm3.weight"]
    assert all(k.startswith(("stages.3.", "downsample_layers.3."))
               for k in result.dropped["stage not built: out_indices=(0, 1, 2)"])
    for a, b in zip(_features(target, X), _features(source, X)[:3], strict=True):
        assert torch.equal(a, b)


def test_detector_checkpoint_without_a_norm_warns(tmp_path):
    source = _detector(None)
    path = _save_detector(source, tmp_path / "no_norm1.pth", drop=("norm1.",))
    target = LieRAConvNeXt("atto")
    with pytest.warns(CheckpointWarning, match=r"no_norm1\.pth: the detector checkpoint has no norm1\.weight, "
                                               r"norm1\.bias; those output norms start from their default init"):
        result = target.load_pretrained(str(path), prefix="backbone.")
    assert result.fresh == ["norm1.weight", "norm1.bias"]
    torch.testing.assert_close(target.norm1.weight, torch.ones(80))


def test_detector_checkpoint_tensor_without_a_place_warns(tmp_path):
    source = _detector(None)
    path = tmp_path / "extra.pth"
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["backbone.stages.0.0.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, path)
    with pytest.warns(CheckpointWarning, match=r"extra\.pth: 1 checkpoint tensors have no place in LieRAConvNeXt-atto "
                                               r"and were not loaded: stages\.0\.0\.extra\.weight"):
        LieRAConvNeXt("atto").load_pretrained(str(path), prefix="backbone")


def _unchanged(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("source_adapter, target_adapter, message", [
    (LIERA, None, r"carries adapter tensors \(\d+, e\.g\. 'downsample_layers\.0\.0\.lora_A\.default'\) but this "
                  r"LieRAConvNeXt has adapter=None; fold them into the weights first \(tools/merge_backbone\.py\)"),
    (LIERA, dict(method="liera", rank=2), r"adapter tensors do not fit this backbone's adapter \(liera-taylor-r2 .*\): "
                                          r"layer 'downsample_layers\.0\.0': lora_A\.default \(16, 12\) in the file, "
                                          r"\(8, 12\) here"),
    (LIERA, dict(method="liera", rank=4, variant="dora"), r"do not fit .*Missing key\(s\).*lora_magnitude\.default"),
    (LIERA, dict(method="liera", rank=4, targets="all"), r"do not fit .*no adapter tensors in the file for \d+ "
                                                         r"adapted layers, e\.g\. .*mlp\.fc1"),
    (dict(method="liera", rank=4, alpha=8), dict(method="liera", rank=4, alpha=16),
     r"layer 'downsample_layers\.0\.0': alpha / rank is 2 in the file, 4 here; .* \(\d+ layers\)"),
])
def test_detector_adapter_mismatch_is_an_error_and_changes_nothing(source_adapter, target_adapter, message,
                                                                    tmp_path):
    path = _save_detector(_detector(source_adapter), tmp_path / "ckpt.pth")
    target = LieRAConvNeXt("atto", adapter=target_adapter)
    before = _unchanged(target)
    with pytest.raises(ValueError, match=r"ckpt\.pth: .*" + message):
        target.load_pretrained(str(path), prefix="backbone")
    after = target.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_wrong_prefix_is_named(tmp_path):
    path = _save_detector(_detector(None), tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match=r"ckpt\.pth: prefix 'bakbone\.' matches no key; the checkpoint's keys start "
                                         r"with \['backbone\.', 'neck\.', 'rpn_head\.'\]"):
        LieRAConvNeXt("atto").load_pretrained(str(path), prefix="bakbone")


@pytest.mark.parametrize("adapter", [dict(method="liera", rank=4), dict(method="liera", rank=4, init="pissa",
                                                                       post="dora")], ids=["liera-auto", "pissa-dora"])
def test_checkpoint_of_an_initialised_detector_reloads_to_the_same_outputs(source, adapter, tmp_path):
    """init_weights resolves the weight-derived scale after the load; a checkpoint saved then reloads exactly."""
    official = _write(source, "official", tmp_path / "ckpt.pt")
    first = LieRAConvNeXt("atto", adapter=adapter, init_cfg=dict(type="Pretrained", checkpoint=str(official)))
    first.init_weights()
    with torch.no_grad():
        for layer in adapter_layers(first).values():
            layer.lora_B["default"].normal_(0.0, 0.05)  # "trained"
    path = _save_detector(first, tmp_path / "epoch_1.pth")
    second = LieRAConvNeXt("atto", adapter=adapter, init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                                                  prefix="backbone."))
    second.init_weights()
    for a, b in zip(_features(second, X), _features(first, X), strict=True):
        assert torch.equal(a, b)


def test_three_stage_detector_merges_and_predicts_the_same_features(tmp_path):
    """out_indices=(0, 1, 2): training checkpoint, tools/merge_backbone.py and the adapter-free config agree."""
    from mmdet.registry import MODELS

    from liera_vision.det import merge_backbone

    from .conftest import ATTO_LIERA, ATTO_PLAIN, load_config

    options = {"model.backbone.out_indices": (0, 1, 2), "model.neck.in_channels": [40, 80, 160]}
    torch.manual_seed(0)
    adapted = MODELS.build(load_config(ATTO_LIERA, options).model)
    adapted.init_weights()
    with torch.no_grad():
        for layer in adapter_layers(adapted.backbone).values():
            layer.lora_B["default"].normal_(0.0, 0.05)
    assert not any(k.startswith("backbone.stages.3.") for k in adapted.state_dict())
    ckpt = tmp_path / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": adapted.state_dict()}, ckpt)
    merged = merge_backbone(ATTO_LIERA, ckpt, tmp_path / "merged.pth", cfg_options=options)
    plain = MODELS.build(load_config(ATTO_PLAIN, options).model)
    plain.load_state_dict(torch.load(merged, weights_only=True)["state_dict"], strict=True)
    x = torch.randn(1, 3, 64, 64)
    adapted.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(adapted.extract_feat(x), plain.extract_feat(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
