"""The demo's own pre-trained backbone: made through Lightning, recorded, cached, loaded by the normal path.

What it is worth is measured, not tested: docs/vtab.md, "The backbone made here" (on the real-mini tasks its
features are worse than a random init's under a linear probe)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from liera_vision.fileio import sha256_file
from liera_vision.models import build_convnextv2
from liera_vision.vtab import VTABClassifier
from liera_vision.vtab.pretrain import PretrainSettings, letters_backbone, read_record, weight_stats

TINY_SOURCE = {"train800": 52, "val200": 26, "test": 26}


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"PretrainSettings.epochs must be a positive integer, got 0"):
        PretrainSettings(epochs=0)
    with pytest.raises(ValueError, match=r"PretrainSettings.weight_decay must be >= 0, got -1"):
        PretrainSettings(weight_decay=-1)
    with pytest.raises(ValueError, match=r"PretrainSettings.image_size must be >= 32 .*, got 16"):
        PretrainSettings(image_size=16)
    with pytest.raises(ValueError, match=r"unknown ConvNeXt-V2 arch 'tiny-ish'"):
        PretrainSettings(arch="tiny-ish")
    assert PretrainSettings().tag() == "convnextv2_atto-32px-2ep-lr0.0003-wd0.0001-b32-w0.2-seed0"


@pytest.mark.slow
def test_pretraining_is_recorded_cached_and_loads_like_any_checkpoint(tmp_path):
    settings = PretrainSettings(image_size=32, epochs=1, batch_size=16)
    backbone = letters_backbone(tmp_path, settings, sizes=TINY_SOURCE, progress=False, echo=lambda _: None)
    assert not backbone.cached and backbone.path.suffix == ".safetensors" and backbone.path.parent.parent == tmp_path
    record = read_record(backbone.path)
    assert record == backbone.record
    assert record["settings"] == {"arch": "atto", "image_size": 32, "epochs": 1, "lr": 3e-4, "weight_decay": 1e-4,
                                  "batch_size": 16, "warmup_epochs": 0.2, "seed": 0}
    assert record["source"]["task"] == "letters" and record["source"]["classes"] == 26
    assert record["source"]["manifest"]["sizes"] == TINY_SOURCE
    assert record["training"]["train_images"] == 78 and record["training"]["test_images"] == 26
    assert 0 <= record["test_accuracy"] <= 1 and {"torch", "lightning", "timm"} <= set(record["versions"])

    # the normal loading path: a 10-class model takes the backbone and skips the 26-class classifier
    model, report = build_convnextv2("atto", 10, checkpoint=backbone.path)
    assert report.skipped_head == ["head.fc.bias", "head.fc.weight"]
    stats = {row["kind"]: row["mean_abs"] for row in weight_stats(model)}
    assert stats == pytest.approx(record["mean_abs_weight"])
    classifier = VTABClassifier(arch="atto", num_classes=4, finetune="linear", checkpoint=str(backbone.path))
    assert not classifier.random_init

    again = letters_backbone(tmp_path, settings, sizes=TINY_SOURCE, progress=False, echo=lambda _: None)
    assert again.cached and again.path == backbone.path
    other = letters_backbone(tmp_path, PretrainSettings(image_size=32, epochs=1, batch_size=16, weight_decay=0.5),
                             sizes=TINY_SOURCE, progress=False, echo=lambda _: None)
    assert not other.cached and other.path != backbone.path and "wd0.5" in other.path.name
    backbone_bytes_path = tmp_path / "first.safetensors"
    backbone_bytes_path.write_bytes(backbone.path.read_bytes())
    backbone.path.write_bytes(backbone.path.read_bytes()[:-8] + b"\0" * 8)  # a damaged file is not reused
    redone = letters_backbone(tmp_path, settings, sizes=TINY_SOURCE, progress=False, echo=lambda _: None)
    assert not redone.cached and redone.record["sha256"] == sha256_file(redone.path)
    # retrained from the same seed: the same weights up to float reassociation. Not byte-identical: BLAS / oneDNN
    # kernels may sum in another order when buffers are aligned differently (a CI run differed in the last bits).
    # Another seed or order of data would differ by ~100% of each tensor's norm, not 0.1%.
    first, second = load_file(backbone_bytes_path), load_file(redone.path)
    for key, value in first.items():
        assert torch.linalg.vector_norm(second[key] - value) <= 1e-3 * torch.linalg.vector_norm(value) + 1e-6, key
