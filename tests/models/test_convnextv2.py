"""ConvNeXt-V2 factory and checkpoint loading from timm, official and FCMAE layouts (local files only)."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from liera_vision.errors import CheckpointWarning
from liera_vision.models import (
    ARCHS,
    build_convnextv2,
    create_convnextv2,
    load_checkpoint,
    timm_to_official,
    to_timm,
)

from .layouts import (  # noqa: F401 (one_thread: a fixture)
    fcmae_dense_state,
    official_state,
    official_to_fcmae,
    one_thread,
    pretraining_parts,
)

PRETRAINING = sorted(pretraining_parts(8))  # the 15 FCMAE keys besides the encoder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["atto", "convnextv2_femto"])
def test_factory_sizes(arch):
    model = create_convnextv2(arch, num_classes=7)
    short = arch.removeprefix("convnextv2_")
    depths, dims = ARCHS[short]
    assert [len(s.blocks) for s in model.stages] == list(depths)
    assert model.head.fc.out_features == 7 and model.num_features == dims[-1]


def test_unknown_arch():
    with pytest.raises(ValueError, match=r"unknown ConvNeXt-V2 arch 'gigantic'; expected one of \['atto'"):
        create_convnextv2("gigantic")


def _same_weights(a, b, skip=("",)):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if not (skip[0] and k.startswith(skip)))


def _source(arch, num_classes=10):
    """A timm model with non-trivial GRN (timm initialises it to zero, which would hide a lost GRN)."""
    torch.manual_seed(0)
    model = create_convnextv2(arch, num_classes=num_classes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name:
                p.normal_(0.3, 0.1)
    return model


@pytest.mark.parametrize("arch", ["atto", "tiny"])  # atto uses 1x1-conv MLPs, tiny nn.Linear
def test_official_inverse_is_exact_under_timms_filter(arch):
    """timm_to_official (ours) followed by timm's checkpoint_filter_fn gives back every tensor exactly."""
    source = _source(arch)
    conv = to_timm(timm_to_official(source), source)
    assert conv.format == "official" and conv.unplaced == [] and conv.dropped == []
    own = source.state_dict()
    assert sorted(conv.state) == sorted(own)
    assert all(torch.equal(conv.state[k], own[k]) for k in own)


# (1, 1, 1, C) as models/convnextv2.py, (1, C) as FCMAE files; atto uses 1x1-conv MLPs, tiny nn.Linear
@pytest.mark.parametrize("arch, grn", [("atto", "4d"), ("atto", "2d"), ("tiny", "2d")])
def test_official_checkpoint_file_loads_same_weights(arch, grn, tmp_path):
    source = _source(arch)
    path = tmp_path / "convnextv2_official.pt"
    torch.save({"model": official_state(source, grn), "epoch": 3}, path)  # the official file layout
    target, report = build_convnextv2(arch, num_classes=10, checkpoint=path)
    assert report.format == "official" and report.missing_keys == [] and report.dropped == []
    assert report.unexpected_keys == [] and report.skipped_head == []
    assert len(report.loaded) == len(source.state_dict())
    assert _same_weights(source, target)


@pytest.mark.parametrize("grn", ["2d", "4d"])
@pytest.mark.parametrize("decoder", [True, False])
def test_released_fcmae_file_loads_and_reports_dropped_keys_once(grn, decoder, tmp_path):
    """Issue 9 §C: official names, GRN (1, C), under 'model', with or without the pre-training decoder."""
    source = _source("atto")
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": fcmae_dense_state(source, grn, decoder)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping the decoder is on purpose: no warning
        target, report = build_convnextv2("atto", num_classes=10, checkpoint=path)
    assert report.format == ("fcmae" if decoder else "official")
    assert report.dropped == (PRETRAINING if decoder else [])
    assert report.missing_keys == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    assert report.unexpected_keys == []
    assert _same_weights(source, target, skip=("head.",))
    text = str(report)
    if decoder:
        assert text.count("dropped pre-training tensors (15): ") == 1
        assert "decoder.* (10), mask_token, pred.* (2), proj.* (2)" in text
    else:
        assert "dropped" not in text


@pytest.mark.parametrize("arch, decoder", [("atto", True), ("atto", False), ("tiny", True)])
def test_sparse_fcmae_checkpoint_file_loads_same_backbone(arch, decoder, tmp_path):
    source = _source(arch)
    fcmae = official_to_fcmae(timm_to_official(source), decoder=decoder)
    assert any(k.endswith(".kernel") for k in fcmae) and ("mask_token" in fcmae) == decoder
    path = tmp_path / "convnextv2_fcmae.pt"
    torch.save({"model": fcmae}, path)
    target, report = build_convnextv2(arch, num_classes=10, checkpoint=path)
    assert report.format == "fcmae"
    assert report.dropped == (PRETRAINING if decoder else [])
    assert report.missing_keys == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    assert _same_weights(source, target, skip=("head.",))


def test_create_returns_the_model_and_hangs_nothing_on_it(tmp_path):
    source = _source("atto")
    path = tmp_path / "official.pt"
    torch.save({"model": timm_to_official(source)}, path)
    model = create_convnextv2("atto", num_classes=10, checkpoint=path)
    assert not hasattr(model, "checkpoint_report") and _same_weights(source, model)
    assert build_convnextv2("atto", num_classes=10)[1] is None


def test_timm_safetensors_file_and_head_mismatch_is_skipped(tmp_path):
    source = create_convnextv2("atto", num_classes=1000)
    path = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = create_convnextv2("atto", num_classes=10)
    report = load_checkpoint(target, path)
    assert report.format == "timm" and report.skipped_head == ["head.fc.bias", "head.fc.weight"]
    assert report.missing_keys == ["head.fc.bias", "head.fc.weight"]
    assert _same_weights(source, target, skip=("head.fc",))


def test_classifier_into_a_headless_model_is_skipped_without_warning(tmp_path):
    source = _source("atto", num_classes=1000)
    path = tmp_path / "official.pt"
    torch.save({"model": timm_to_official(source)}, path)
    target = create_convnextv2("atto", num_classes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_checkpoint(target, path)
    assert report.skipped_head == ["head.fc.bias", "head.fc.weight"] and report.unexpected_keys == []
    assert _same_weights(target, source)  # every tensor of the headless model (head.norm included)


def test_tensors_the_model_cannot_place_are_warned_about_by_name(tmp_path):
    source = _source("atto")
    state = timm_to_official(source)
    state["stages.0.0.extra.weight"] = torch.zeros(3, 3)  # 2-D: timm's filter would crash on it
    state["stages.9.0.gamma"] = torch.zeros(3)
    target = create_convnextv2("atto", num_classes=10)
    message = (r"state dict: 2 checkpoint tensors have no place in ConvNeXt and were not loaded: "
               r"stages\.0\.0\.extra\.weight, stages\.9\.blocks\.0\.gamma")
    with pytest.warns(CheckpointWarning, match=message):
        report = load_checkpoint(target, state)
    assert report.unexpected_keys == ["stages.0.0.extra.weight", "stages.9.blocks.0.gamma"]
    assert _same_weights(source, target)


@pytest.mark.parametrize("prefix", ["backbone", "backbone."])  # mmengine treats both alike
def test_prefix_with_or_without_the_dot(prefix, tmp_path):
    source = _source("atto")
    state = {f"backbone.{k}": v for k, v in timm_to_official(source).items()}
    state["neck.conv.weight"] = torch.zeros(2, 2)
    path = tmp_path / "detector.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, path)
    target = create_convnextv2("atto", num_classes=10)
    report = load_checkpoint(target, path, prefix=prefix)
    assert report.format == "official" and report.unexpected_keys == []
    assert _same_weights(source, target)
    with pytest.raises(ValueError, match=r"detector\.pth: prefix 'bakbone\.' matches no key; the checkpoint's keys "
                                         r"start with \['backbone\.', 'neck\.'\]"):
        load_checkpoint(target, path, prefix="bakbone")


def test_two_layouts_mapping_onto_one_tensor_is_an_error():
    state = timm_to_official(create_convnextv2("atto"))
    state["stem.0.weight"] = state["downsample_layers.0.0.weight"].clone()
    with pytest.raises(ValueError, match=r"'downsample_layers\.0\.0\.weight' and 'stem\.0\.weight' both map to the "
                                         r"model's 'stem\.0\.weight'"):
        load_checkpoint(create_convnextv2("atto"), state)


@pytest.mark.parametrize("writer", ["official", "fcmae"])
def test_wrong_arch_names_the_key(writer, tmp_path):
    femto = timm_to_official(create_convnextv2("femto"))
    path = tmp_path / "femto.pt"
    torch.save({"model": femto if writer == "official" else official_to_fcmae(femto)}, path)
    target = create_convnextv2("atto")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"femto.pt: '.*' has shape .* \(.*wrong arch\?\)"):
        load_checkpoint(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # unchanged


def test_unrecognised_layout_and_loaded_nothing(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"encoder_q.conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r"other.pt: unrecognised checkpoint layout"):
        create_convnextv2("atto", checkpoint=path)
    path2 = tmp_path / "heads.pt"
    torch.save({"stages.9.blocks.0.x": torch.zeros(2)}, path2)
    with pytest.raises(ValueError, match=r"heads.pt: no tensor matches the model"):
        create_convnextv2("atto", checkpoint=path2)


@pytest.mark.parametrize("grn", ["4d", "2d"])
def test_truncated_checkpoint_is_an_error(grn, tmp_path):
    state = official_state(create_convnextv2("atto"), grn)
    state.pop("stages.2.3.dwconv.weight")
    path = tmp_path / "truncated.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"truncated.pt: backbone tensors missing from the checkpoint: "
                                         r"stages\.2\.blocks\.3\.conv_dw\.weight \(wrong arch or a truncated file\?\)"):
        create_convnextv2("atto", checkpoint=path)


def test_pickled_objects_are_refused_by_default(tmp_path):
    import argparse

    path = tmp_path / "unsafe.pt"  # an arbitrary pickled object, as training scripts often save their args
    torch.save({"model": create_convnextv2("atto").state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match=r"unsafe.pt: cannot read the checkpoint with torch.load\(weights_only=True\)"
                                         r".*allow_pickle=True"):
        create_convnextv2("atto", checkpoint=path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_convnextv2("atto", checkpoint=tmp_path / "missing.pt")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"list.pt: expected a state dict"):
        create_convnextv2("atto", checkpoint=path)


def test_pretrained_tags_are_checked_and_an_unreachable_hub_is_explained(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown timm pretrained tag 'imagenet' .*\['fcmae', 'fcmae_ft_in1k'\]"):
        create_convnextv2("atto", pretrained="imagenet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"could not fetch the timm weights 'convnextv2_atto.fcmae_ft_in1k' .*"
                                           r"checkpoint=PATH"):
        create_convnextv2("atto", pretrained="fcmae_ft_in1k")


def test_allow_pickle_reads_a_trusted_file(tmp_path):
    import argparse

    source = create_convnextv2("atto", num_classes=10)
    path = tmp_path / "trusted.pt"
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=1)}, path)
    target = create_convnextv2("atto", num_classes=10, checkpoint=path, allow_pickle=True)
    assert _same_weights(source, target)
