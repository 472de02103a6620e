"""CheckedCocoDataset: the generated dataset, clear errors for malformed files and missing images, CocoMetric."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from .conftest import ATTO_LIERA, load_config


def _dataset(root, ann="annotations/instances_train2017.json", **kwargs):
    from mmdet.registry import DATASETS

    return DATASETS.build(dict(type="CheckedCocoDataset", data_root=str(root), ann_file=ann,
                               data_prefix=dict(img="train2017/"), test_mode=True,
                               pipeline=[dict(type="LoadImageFromFile"),
                                         dict(type="LoadAnnotations", with_bbox=True, with_mask=True)],
                               **kwargs))


@pytest.fixture
def coco_copy(tiny_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    return root


def _edit(root, fn):
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_tiny_dataset_has_boxes_polygons_and_rle(tiny_coco):
    load_config(ATTO_LIERA)  # registers the plugin, mmdet scope
    ds = _dataset(tiny_coco)
    assert len(ds) == 4
    kinds = {type(inst["mask"]).__name__ for i in range(len(ds)) for inst in ds.get_data_info(i)["instances"]}
    assert kinds == {"list", "dict"}  # polygons and RLE
    sample = ds[0]
    assert sample["gt_bboxes"].tensor.shape == (4, 4) and sample["gt_masks"].masks.shape == (4, 96, 128)
    assert sample["gt_ignore_flags"].tolist() == [False, False, False, True]  # the crowd region
    assert all(m.sum() > 0 for m in sample["gt_masks"].masks)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] \(id 2\): 'bbox' must be \[x, y, width, height\]"),
    (lambda d: d["annotations"][0].update(category_id=999),
     r"annotations\[0\] \(id 1\): 'category_id' 999 is not the id of any entry in 'categories'"),
    (lambda d: d["annotations"][2].update(segmentation={"counts": "abc"}),
     r"annotations\[2\] \(id 3\): 'segmentation'"),
    (lambda d: d["annotations"][0].update(image_id=77), r"'image_id' 77 is not the id of any entry in 'images'"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] needs an integer 'id' and a string 'file_name'"),
    (lambda d: d.pop("categories"), r"'categories' must be a list"),
])
def test_malformed_annotation_file_names_file_and_entry(coco_copy, edit, message):
    load_config(ATTO_LIERA)
    path = _edit(coco_copy, edit)
    with pytest.raises(ValueError, match=rf"malformed COCO annotation file {path}: .*{message}"):
        _dataset(coco_copy)


def test_invalid_json_names_file_and_line(coco_copy):
    load_config(ATTO_LIERA)
    path = coco_copy / "annotations" / "instances_train2017.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON: .* at line 2, column 12"):
        _dataset(coco_copy)


def test_missing_image_is_named(coco_copy):
    load_config(ATTO_LIERA)
    (coco_copy / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 4 images listed in .*instances_train2017\.json are missing, "
                                                r"e\.g\. \['.*train2017/000000000003\.jpg'\]"):
        _dataset(coco_copy)


def test_categories_unknown_to_the_config_are_an_error(coco_copy):
    load_config(ATTO_LIERA)
    _edit(coco_copy, lambda d: [c.update(name=f"thing{c['id']}") for c in d["categories"]])
    with pytest.raises(ValueError, match=r"none of its categories is one of the 80 dataset classes"):
        _dataset(coco_copy)


def test_ground_truth_as_predictions_scores_ap_1_for_bbox_and_segm(tiny_coco):
    """The configured CocoMetric reads the polygon and RLE masks as mmdet's pipeline does."""
    from mmdet.registry import METRICS

    cfg = load_config(ATTO_LIERA)
    ds = _dataset(tiny_coco, ann="annotations/instances_val2017.json")
    metric = METRICS.build({**cfg.val_evaluator, "ann_file": str(tiny_coco / "annotations/instances_val2017.json")})
    metric.dataset_meta = ds.metainfo
    samples = []
    for i in range(len(ds)):
        item = ds[i]
        keep = ~torch.as_tensor(item["gt_ignore_flags"])
        samples.append({"img_id": item["img_id"], "ori_shape": item["ori_shape"], "pred_instances": {
            "bboxes": torch.as_tensor(item["gt_bboxes"].tensor)[keep],
            "labels": torch.as_tensor(item["gt_bboxes_labels"])[keep],
            "scores": torch.ones(int(keep.sum())),
            "masks": torch.as_tensor(item["gt_masks"].masks[keep.numpy()].astype(np.bool_))}})
    metric.process({}, samples)
    results = metric.evaluate(len(samples))
    assert results["coco/bbox_mAP"] == pytest.approx(1.0) and results["coco/segm_mAP"] == pytest.approx(1.0)
