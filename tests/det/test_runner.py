"""The atto LieRA config end to end with the real mmengine Runner on CPU: train, checkpoint, resume, evaluate."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liera_vision.det import cli, load_local_checkpoint

from .conftest import ATTO_LIERA


@pytest.mark.slow
def test_train_checkpoint_resume_and_evaluate(tiny_options, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    work = tmp_path / "work"
    # 2 epochs of 2 iterations (4 images, batch 2); evaluation only at the end of epoch 2
    first = cli.train_main([str(ATTO_LIERA), "--work-dir", str(work), "--cfg-options", "train_cfg.max_epochs=1",
                            "train_cfg.val_interval=2", *tiny_options])
    assert (first.epoch, first.iter) == (1, 2)
    # a non-distributed run leaves no LOCAL_RANK behind: Lightning would take it for an external launcher
    assert "LOCAL_RANK" not in os.environ
    assert (work / "epoch_1.pth").is_file() and (work / "last_checkpoint").read_text().endswith("epoch_1.pth")
    saved = load_local_checkpoint(str(work / "epoch_1.pth"))["state_dict"]

    resumed = cli.train_main([str(ATTO_LIERA), "--work-dir", str(work), "--resume", "--cfg-options",
                              "train_cfg.max_epochs=2", "train_cfg.val_interval=2", *tiny_options])
    assert (resumed.epoch, resumed.iter) == (2, 4)
    model = resumed.model
    # the optimizer state came back too: AdamW has taken 2 steps before and 2 after the resume
    lora_B = model.backbone.stages[2][3].conv_dw.lora_B["default"]
    assert int(resumed.optim_wrapper.optimizer.state[lora_B]["step"]) == 4
    # PEFT: the base weights are the checkpoint's (frozen); the adapters moved on after the resume
    state = model.state_dict()
    assert torch.equal(state["backbone.stages.2.3.conv_dw.base_layer.weight"],
                       saved["backbone.stages.2.3.conv_dw.base_layer.weight"])
    key = "backbone.stages.2.3.conv_dw.lora_B.default"
    assert not torch.equal(state[key], saved[key])
    assert saved[key].abs().sum() > 0  # trained away from B = 0

    hub = resumed.message_hub
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        value = hub.get_scalar(f"val/{key}").current()
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (key, value)
    losses = hub.get_scalar("train/loss").data[0]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses)


@pytest.mark.slow
def test_missing_image_stops_training_with_its_name(tiny_coco, tiny_options, tmp_path):
    data = tmp_path / "coco"
    shutil.copytree(tiny_coco, data)
    (data / "train2017" / "000000000002.jpg").unlink()
    options = [o.replace(str(tiny_coco), str(data)) for o in tiny_options]
    with pytest.raises(FileNotFoundError, match=r"images listed in .*instances_train2017\.json are missing, "
                                                r"e\.g\. \['.*/train2017/000000000002\.jpg'\]"):
        cli.train_main([str(ATTO_LIERA), "--work-dir", str(tmp_path / "work"), "--cfg-options", *options])


@pytest.mark.slow
def test_annotations_the_pipeline_cannot_use_stop_training_at_start_up(tiny_coco, tiny_options, tmp_path):
    """Without the check, Mask R-CNN meets KeyError: 'mask' when the image comes up (possibly hours in)."""
    data = tmp_path / "coco"
    shutil.copytree(tiny_coco, data)
    ann_file = data / "annotations" / "instances_train2017.json"
    content = json.loads(ann_file.read_text())
    content["annotations"][0].pop("segmentation")
    content["annotations"][6]["segmentation"] = []
    ann_file.write_text(json.dumps(content))
    options = [o.replace(str(tiny_coco), str(data)) for o in tiny_options]
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=r"instances_train2017\.json: annotations the pipeline cannot use: "
                                         r"no 'segmentation': ids \[1\]; empty 'segmentation': ids \[7\]"):
        cli.train_main([str(ATTO_LIERA), "--work-dir", str(work), "--cfg-options", *options])
    assert not list(work.rglob("*.pth"))


@pytest.mark.slow
def test_resume_through_mmdetection_tools_train(tiny_options, tmp_path):
    """MMDetection's own tools/train.py with the config's custom_imports and runner_type resumes under torch 2.14."""
    import mmdet

    train_py = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"
    assert train_py.is_file(), train_py
    work = tmp_path / "work"
    launcher = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LIERA_VISION_TRACEBACK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    command = [sys.executable, str(train_py), str(ATTO_LIERA), "--work-dir", str(work)]
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    first = subprocess.run([*command, "--cfg-options", "train_cfg.max_epochs=1", "train_cfg.val_interval=2",
                            *tiny_options], **run)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    second = subprocess.run([*command, "--resume", "--cfg-options", "train_cfg.max_epochs=2",
                             "train_cfg.val_interval=2", *tiny_options], **run)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "resumed epoch: 1, iter: 2" in log
    assert not re.search(r"Epoch\(train\)\s+\[1\]", log) and re.search(r"Epoch\(train\)\s+\[2\]", log)
    ckpt = load_local_checkpoint(work / "epoch_2.pth")
    assert (ckpt["meta"]["epoch"], ckpt["meta"]["iter"]) == (2, 4)
    first_ckpt = load_local_checkpoint(work / "epoch_1.pth")
    key = "backbone.stages.2.3.conv_dw.lora_B.default"
    assert not torch.equal(ckpt["state_dict"][key], first_ckpt["state_dict"][key])  # trained on after the resume
    step = [s["step"] for s in ckpt["optimizer"]["state"].values()]
    assert step and all(int(v) == 4 for v in step)  # AdamW: 2 steps before, 2 after the resume
