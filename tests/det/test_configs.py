"""The configs in configs/coco: structure, trainable-parameter counts (logged), layer-wise lr decay groups."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from liera_vision.core import count_parameters
from liera_vision.models import ARCHS

from .conftest import ATTO_LIERA, ATTO_PLAIN, B_CONFIGS, CONFIGS, load_config

ALL_CONFIGS = sorted(CONFIGS.glob("*.py"))
# the paper's count of kernel-factorization adapter parameters per unit of rank, convnextv2_base (docs/coco.md)
BASE_PER_RANK = 898_964
BASE_OUT_NORMS = 2 * sum(ARCHS["base"][1])  # LayerNorm weight + bias per returned stage


def test_the_promised_configs_exist():
    names = {p.name for p in ALL_CONFIGS}
    for method in ("liera-r16", "liera-r32", "lora-r16", "lora-r32", "dora-liera-r16"):
        assert f"mask-rcnn_{method}-convnextv2-b_fpn_1x_coco.py" in names
    assert {"mask-rcnn_convnextv2-b_fpn_1x_coco.py", ATTO_LIERA.name, ATTO_PLAIN.name} <= names
    assert len(B_CONFIGS) == 6


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_structure(path):
    cfg = load_config(path)
    assert cfg.custom_imports == dict(imports=["liera_vision.det"], allow_failed_imports=False)
    assert cfg.model.type == "MaskRCNN" and cfg.model.backbone.type == "LieRAConvNeXt"
    assert cfg.model.neck.in_channels == list(ARCHS[cfg.model.backbone.arch][1])
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.metric == ["bbox", "segm"]
    assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[1].milestones == [8, 11]
    assert cfg.optim_wrapper.optimizer.type == "AdamW"
    assert cfg.optim_wrapper.constructor == "LearningRateDecayOptimizerConstructor"
    assert cfg.runner_type == "CheckedRunner"
    for split in ("train", "val", "test"):
        assert cfg[f"{split}_dataloader"].dataset.type == "CheckedCocoDataset"
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == "CheckedCocoMetric"
    assert _plain(cfg.default_hooks.checkpoint.to_dict()) == dict(type="CheckpointHook", interval=1, max_keep_ckpts=3,
                                                                  save_best="auto")
    init_cfg = cfg.model.backbone.get("init_cfg")
    if "atto" in path.name:
        assert init_cfg is None  # smoke configs run without any checkpoint
    else:
        assert init_cfg.checkpoint.endswith("/convnextv2_base_1k_224_ema.pt")


MMDET_BASES = ("models/mask-rcnn_r50_fpn.py", "datasets/coco_instance.py", "schedules/schedule_1x.py",
               "default_runtime.py")


def _plain(value):
    """A config value as plain data, without mmengine's scope markers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "_scope_"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_configs_are_mmdetection_bases_plus_what_differs(path):
    """Everything but the documented overrides is MMDetection's own Mask R-CNN / COCO / 1x / runtime."""
    import mmdet as mmdet_package
    from mmengine.config import Config

    bases = Path(mmdet_package.__file__).parent / ".mim" / "configs" / "_base_"  # what mmdet:: resolves to
    ours = _plain(load_config(path).to_dict())
    mmdet = {}
    for base in MMDET_BASES:
        mmdet.update(_plain(Config.fromfile(str(bases / base)).to_dict()))
    model, base_model = ours.pop("model"), mmdet.pop("model")
    assert model.pop("backbone")["type"] == "LieRAConvNeXt" and base_model.pop("backbone")["type"] == "ResNet"
    assert model["neck"].pop("in_channels") == list(ARCHS[load_config(path).model.backbone.arch][1])
    base_model["neck"].pop("in_channels")
    assert model == base_model  # heads, losses, train / test settings, data preprocessor
    for split in ("train", "val", "test"):
        assert ours[f"{split}_dataloader"]["dataset"].pop("type") == "CheckedCocoDataset"
        mmdet[f"{split}_dataloader"]["dataset"].pop("type")
    for split in ("val", "test"):
        assert ours[f"{split}_evaluator"].pop("type") == "CheckedCocoMetric"
        mmdet[f"{split}_evaluator"].pop("type")
    optim, base_optim = ours.pop("optim_wrapper"), mmdet.pop("optim_wrapper")
    assert optim["optimizer"] == dict(type="AdamW", lr=1e-4, betas=[0.9, 0.999], weight_decay=0.05)
    assert optim["type"] == base_optim["type"] == "OptimWrapper"
    checkpoint_hook = ours["default_hooks"].pop("checkpoint")
    assert checkpoint_hook == {**mmdet["default_hooks"].pop("checkpoint"), "max_keep_ckpts": 3, "save_best": "auto"}
    own = {"custom_imports", "runner_type", "checkpoint_file", "dataset_type"}
    for key in sorted(set(mmdet) - own):  # pipelines, data roots, schedule, hooks, runtime
        assert ours[key] == mmdet[key], key
    assert set(ours) - set(mmdet) <= own


def _expected_trainable(name: str) -> int:
    depths, dims = ARCHS["base"]
    if name == "mask-rcnn_convnextv2-b_fpn_1x_coco.py":
        return -1  # everything
    rank = int(re.search(r"-r(\d+)-", name)[1])
    adapted_out_channels = dims[0] + sum(dims[1:]) + sum(d * c for d, c in zip(depths, dims))
    dora = adapted_out_channels if name.startswith("mask-rcnn_dora") else 0
    return rank * BASE_PER_RANK + dora + BASE_OUT_NORMS


@pytest.mark.parametrize("path", B_CONFIGS, ids=lambda p: p.stem)
def test_b_backbone_trainable_parameters_are_logged(path, tmp_path):
    from mmdet.registry import MODELS
    from mmengine.logging import MMLogger

    cfg = load_config(path)
    log_file = tmp_path / "run.log"
    MMLogger.get_instance(f"count-{uuid.uuid4().hex}", log_file=str(log_file))  # becomes the current logger
    backbone = MODELS.build(cfg.model.backbone)
    count = count_parameters(backbone)
    expected = _expected_trainable(path.name)
    assert count.trainable == (count.total if expected == -1 else expected)
    logged = re.search(r"LieRAConvNeXt-base \((.*)\): trainable backbone parameters ([\d,]+) / ([\d,]+)",
                       log_file.read_text())
    assert logged, log_file.read_text()
    assert int(logged[2].replace(",", "")) == count.trainable and int(logged[3].replace(",", "")) == count.total
    if "liera-r16" in path.name and "dora" not in path.name:
        assert logged[2] == "14,387,264" and logged[1].startswith("liera-taylor-r16")


# --- layer-wise lr decay ---------------------------------------------------------------------------
def _groups(cfg):
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    by_param = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in by_param, "a parameter is in two groups"
            by_param[id(p)] = group
    return model, {name: by_param.get(id(p)) for name, p in model.named_parameters()}


def _check(model, groups, expected_ids, num_layers, base_lr, decay):
    for name, p in model.named_parameters():
        assert (groups[name] is not None) == p.requires_grad, name  # frozen weights get no group
    for name, layer_id in expected_ids.items():
        group = groups[name]
        scale = decay ** (num_layers + 2 - layer_id - 1)
        assert group["lr_scale"] == pytest.approx(scale), name
        assert group["lr"] == pytest.approx(base_lr * scale), name
        one_d = model.get_parameter(name).dim() == 1
        assert group["weight_decay"] == (0.0 if one_d else 0.05), name


def test_layer_decay_groups_for_adapter_parameters():
    """mmdet's ConvNeXt layer ids from the official names: stem 0, stage0 1, ds1/stage1 2, stage2 3 + b//3, stage3 5."""
    cfg = load_config(ATTO_LIERA)
    num_layers, decay, base_lr = 5, cfg.optim_wrapper.paramwise_cfg.decay_rate, cfg.optim_wrapper.optimizer.lr
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == num_layers
    model, groups = _groups(cfg)
    expected = {
        "backbone.downsample_layers.0.0.lora_A.default": 0,
        "backbone.stages.0.1.conv_dw.lora_B.default": 1,
        "backbone.downsample_layers.1.1.lora_A.default": 2,
        "backbone.stages.1.0.conv_dw.lora_A.default": 2,
        "backbone.downsample_layers.2.1.lora_B.default": 3,
        "backbone.stages.2.2.conv_dw.lora_A.default": 3,
        "backbone.stages.2.3.conv_dw.lora_B.default": 4,
        "backbone.downsample_layers.3.1.lora_A.default": 5,
        "backbone.stages.3.1.conv_dw.lora_A.default": 5,
        "backbone.norm0.weight": 6,
        "backbone.norm3.bias": 6,
        "neck.lateral_convs.0.conv.weight": 6,
        "roi_head.bbox_head.fc_cls.weight": 6,
    }
    _check(model, groups, expected, num_layers, base_lr, decay)
    assert groups["backbone.stages.2.3.conv_dw.base_layer.weight"] is None


def test_layer_decay_groups_for_full_fine_tuning():
    cfg = load_config(ATTO_PLAIN)
    model, groups = _groups(cfg)
    expected = {
        "backbone.downsample_layers.0.0.weight": 0,
        "backbone.downsample_layers.0.1.bias": 0,
        "backbone.stages.0.0.mlp.grn.weight": 1,
        "backbone.stages.2.5.conv_dw.weight": 4,
        "backbone.stages.2.0.mlp.fc1.weight": 3,
        "backbone.downsample_layers.3.1.weight": 5,
        "backbone.stages.3.0.norm.weight": 5,
        "rpn_head.rpn_conv.bias": 6,
    }
    _check(model, groups, expected, 5, cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.decay_rate)
