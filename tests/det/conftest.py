"""Fixtures for the MMDetection plugin tests: config paths, a generated COCO-format dataset, CPU-sized options."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "coco"
ATTO_LIERA = CONFIGS / "mask-rcnn_liera-r16-convnextv2-atto_fpn_1x_coco.py"
ATTO_PLAIN = CONFIGS / "mask-rcnn_convnextv2-atto_fpn_1x_coco.py"
B_CONFIGS = sorted(CONFIGS.glob("mask-rcnn_*convnextv2-b_fpn_1x_coco.py"))


def load_config(path: Path, options: dict | None = None):
    """The config with its custom imports done and mmdet as the default scope."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    init_default_scope("mmdet")
    return cfg


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    """4 generated 96x128 images (boxes; polygon, compressed-RLE and crowd RLE masks), COCO 2017 layout."""
    from liera_vision.det.demo import write_tiny_coco

    return write_tiny_coco(tmp_path_factory.mktemp("tiny_coco"), num_images=4)


@pytest.fixture
def tiny_options(tiny_coco) -> list[str]:
    """``--cfg-options`` that point a COCO config at ``tiny_coco`` and size Mask R-CNN for 2 CPU cores.

    The real configs stay as they are: images are resized to 128x96 instead of 1333x800, fewer
    RoIs are sampled and kept, no worker processes, and every detection is kept
    (score_thr=0) so that CocoMetric has something to score after a few random-init iterations.
    """
    root = str(tiny_coco)
    ann = f"{root}/annotations/instances_val2017.json"
    options = [f"{split}_dataloader.dataset.data_root={root}/" for split in ("train", "val", "test")]
    options += [f"{split}_evaluator.ann_file={ann}" for split in ("val", "test")]
    options += [f"{split}_dataloader.{key}" for split in ("train", "val", "test")
                for key in ("num_workers=0", "persistent_workers=False")]
    return options + [
        "train_dataloader.dataset.pipeline.2.scale=(128,96)",
        "val_dataloader.dataset.pipeline.1.scale=(128,96)",
        "test_dataloader.dataset.pipeline.1.scale=(128,96)",
        "train_dataloader.dataset.filter_cfg.min_size=0",
        "model.train_cfg.rpn_proposal.max_per_img=100",
        "model.train_cfg.rcnn.sampler.num=64",
        "model.test_cfg.rpn.max_per_img=100",
        "model.test_cfg.rcnn.max_per_img=20",
        "model.test_cfg.rcnn.score_thr=0.0",
        "param_scheduler.0.end=2",
        "default_hooks.logger.interval=1",
        "log_processor.window_size=1",
        "default_hooks.visualization.draw=False",
    ]
