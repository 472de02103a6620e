"""tools/merge_backbone.py: the merged checkpoint in the adapter-free config predicts what the adapted model does."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from liera_vision.core import AdapterConfig, adapter_layers
from liera_vision.det import cli

from .conftest import ATTO_LIERA, ATTO_PLAIN, load_config


def _trained_adapted_checkpoint(path):
    """The atto LieRA detector with adapters moved well away from the identity, saved as mmengine does."""
    from mmdet.registry import MODELS

    cfg = load_config(ATTO_LIERA)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for layer in adapter_layers(model.backbone).values():
            layer.lora_B["default"].normal_(0.0, 0.5)
    torch.save({"meta": {"epoch": 12, "dataset_meta": {"classes": ("person",)}}, "state_dict": model.state_dict()},
               path)
    return model


def _predictions(path):
    with open(path, "rb") as fh:  # written by this test run (DumpDetResults)
        return pickle.load(fh)


@pytest.mark.slow
def test_merged_checkpoint_predicts_the_same_boxes_and_masks(tiny_options, tmp_path):
    adapted_ckpt, merged_ckpt = tmp_path / "adapted.pth", tmp_path / "merged.pth"
    adapted = _trained_adapted_checkpoint(adapted_ckpt)
    cli.merge_main([str(ATTO_LIERA), str(adapted_ckpt), str(merged_ckpt)])

    merged = torch.load(merged_ckpt, map_location="cpu", weights_only=True)  # tensors and builtins only
    assert AdapterConfig.from_dict(merged["meta"]["merged_adapter"]).name == "liera-taylor-r16"
    assert merged["meta"]["epoch"] == 12
    from mmdet.registry import MODELS

    plain_keys = set(MODELS.build(load_config(ATTO_PLAIN).model).state_dict())
    assert set(merged["state_dict"]) == plain_keys
    base = adapted.state_dict()["backbone.stages.2.1.conv_dw.base_layer.weight"]
    assert (merged["state_dict"]["backbone.stages.2.1.conv_dw.weight"] - base).abs().max() > 1e-3  # merge moved W

    common = ["--cfg-options", *tiny_options]
    metrics_a = cli.test_main([str(ATTO_LIERA), str(adapted_ckpt), "--work-dir", str(tmp_path / "a"),
                               "--out", str(tmp_path / "adapted.pkl"), *common])
    metrics_m = cli.test_main([str(ATTO_PLAIN), str(merged_ckpt), "--work-dir", str(tmp_path / "m"),
                               "--out", str(tmp_path / "merged.pkl"), *common])
    preds_a, preds_m = _predictions(tmp_path / "adapted.pkl"), _predictions(tmp_path / "merged.pkl")
    assert len(preds_a) == len(preds_m) == 4
    for a, m in zip(preds_a, preds_m):
        assert a["img_id"] == m["img_id"]
        pa, pm = a["pred_instances"], m["pred_instances"]
        assert len(pa["bboxes"]) > 0
        torch.testing.assert_close(pm["bboxes"], pa["bboxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(pm["scores"], pa["scores"], rtol=0, atol=1e-5)
        assert torch.equal(pm["labels"], pa["labels"])
        assert [r["counts"] for r in pm["masks"]] == [r["counts"] for r in pa["masks"]]
    assert metrics_m == metrics_a and {"coco/bbox_mAP", "coco/segm_mAP"} <= set(metrics_m)


def test_merging_an_adapter_free_config_is_refused(tmp_path):
    from mmdet.registry import MODELS

    path = tmp_path / "plain.pth"
    torch.save({"state_dict": MODELS.build(load_config(ATTO_PLAIN).model).state_dict()}, path)
    with pytest.raises(ValueError, match=r"LieRAConvNeXt without adapters; merge_backbone needs .* an 'adapter'"):
        cli.merge_main([str(ATTO_PLAIN), str(path), str(tmp_path / "out.pth")])


def test_checkpoint_of_another_config_is_named(tmp_path):
    from mmdet.registry import MODELS

    path = tmp_path / "plain.pth"
    torch.save({"state_dict": MODELS.build(load_config(ATTO_PLAIN).model).state_dict()}, path)
    message = (r"plain\.pth does not match .*liera-r16-convnextv2-atto_fpn_1x_coco\.py: 80 missing keys "
               r"\['backbone\.downsample_layers\.0\.0\.base_layer\.bias', .*\], 32 unexpected keys")
    with pytest.raises(ValueError, match=message):
        cli.merge_main([str(ATTO_LIERA), str(path), str(tmp_path / "out.pth")])
    assert not (tmp_path / "out.pth").exists()


def test_merged_file_is_atomic_with_the_usual_permissions(tmp_path):
    """The one atomic-write helper: no temporary file left, mode 0666 & ~umask (mkstemp alone gives 0600)."""
    adapted_ckpt, out = tmp_path / "adapted.pth", tmp_path / "out" / "merged.pth"
    _trained_adapted_checkpoint(adapted_ckpt)
    old = os.umask(0o027)
    try:
        path = cli.merge_main([str(ATTO_LIERA), str(adapted_ckpt), str(out)])
    finally:
        os.umask(old)
    assert path == out and os.stat(out).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged.pth"]
    merged = torch.load(out, map_location="cpu", weights_only=True)
    assert "backbone.stages.2.1.conv_dw.weight" in merged["state_dict"]
    assert not any("lora_" in k or "base_layer" in k for k in merged["state_dict"])


def test_a_failed_merge_leaves_the_output_untouched(tmp_path):
    from mmdet.registry import MODELS

    plain, out = tmp_path / "plain.pth", tmp_path / "merged.pth"
    torch.save({"state_dict": MODELS.build(load_config(ATTO_PLAIN).model).state_dict()}, plain)
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError, match=r"plain\.pth does not match"):
        cli.merge_main([str(ATTO_LIERA), str(plain), str(out)])
    assert out.read_bytes() == b"previous result" and sorted(p.name for p in tmp_path.iterdir()) == [
        "merged.pth", "plain.pth"]
