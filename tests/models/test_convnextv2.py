"""ConvNeXt-V2 factory and checkpoint loading from timm, official and FCMAE layouts (local files only)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from liera_vision.models import (
    ARCHS,
    create_convnextv2,
    load_checkpoint,
    official_to_fcmae,
    timm_to_official,
)


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


@pytest.mark.parametrize("arch", ["atto", "tiny"])  # atto uses 1x1-conv MLPs, tiny nn.Linear
def test_official_checkpoint_file_loads_same_weights(arch, tmp_path):
    source = create_convnextv2(arch, num_classes=10)
    path = tmp_path / "convnextv2_official.pt"
    torch.save({"model": timm_to_official(source), "epoch": 3}, path)  # the official file layout
    target = create_convnextv2(arch, num_classes=10, checkpoint=path)
    assert target.checkpoint_report.format == "official"
    assert target.checkpoint_report.missing_keys == []
    assert _same_weights(source, target)


@pytest.mark.parametrize("arch", ["atto", "tiny"])
def test_fcmae_checkpoint_file_loads_same_backbone(arch, tmp_path):
    source = create_convnextv2(arch, num_classes=10)
    fcmae = official_to_fcmae(timm_to_official(source))
    assert any(k.endswith(".kernel") for k in fcmae) and "mask_token" in fcmae
    path = tmp_path / "convnextv2_fcmae.pt"
    torch.save({"model": fcmae}, path)
    target = create_convnextv2(arch, num_classes=10, checkpoint=path)
    report = target.checkpoint_report
    assert report.format == "fcmae"
    assert report.missing_keys == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    assert _same_weights(source, target, skip=("head.",))


def test_timm_safetensors_file_and_head_mismatch_is_skipped(tmp_path):
    source = create_convnextv2("atto", num_classes=1000)
    path = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = create_convnextv2("atto", num_classes=10)
    report = load_checkpoint(target, path)
    assert report.format == "timm" and report.skipped_head == ["head.fc.bias", "head.fc.weight"]
    assert _same_weights(source, target, skip=("head.fc",))


def test_wrong_arch_names_the_key(tmp_path):
    path = tmp_path / "femto.pt"
    torch.save({"model": timm_to_official(create_convnextv2("femto"))}, path)
    with pytest.raises(ValueError, match=r"femto.pt: .* has shape .* in the model \(wrong arch\?\)"):
        create_convnextv2("atto", checkpoint=path)


def test_unrecognised_layout_and_loaded_nothing(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"encoder_q.conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r"other.pt: unrecognised checkpoint layout"):
        create_convnextv2("atto", checkpoint=path)
    path2 = tmp_path / "heads.pt"
    torch.save({"stages.9.blocks.0.x": torch.zeros(2)}, path2)
    with pytest.raises(ValueError, match=r"heads.pt: no tensor matches the model"):
        create_convnextv2("atto", checkpoint=path2)


def test_truncated_checkpoint_is_an_error(tmp_path):
    state = timm_to_official(create_convnextv2("atto"))
    state.pop("stages.2.3.dwconv.weight")
    path = tmp_path / "truncated.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"truncated.pt: backbone tensors missing .*stages.2.blocks.3.conv_dw.weight"):
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
