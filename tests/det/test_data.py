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
    # pycocotools indexes annotations by id: a duplicate silently replaces the other (mmdet: a bare assert)
    (lambda d: d["annotations"][5].update(id=1), r"annotations\[5\]: duplicate annotation id 1"),
    # mmdet maps class names to ids: a name used twice gives a class two ids and shifts every later label
    (lambda d: d["categories"][2].update(name="person"),
     r"categories\[2\] \(id 3\): duplicate category name 'person' \(also id 1\)"),
    # mmdet and pycocotools test iscrowd's truth: the string "0" would make a crowd (ignored) region
    (lambda d: d["annotations"][0].update(iscrowd="0"),
     r"annotations\[0\] \(id 1\): 'iscrowd' must be 0 or 1, got '0'"),
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
    with pytest.raises(ValueError, match=r"the dataset classes \['person', 'bicycle', .* are not categories of the "
                                         r"file \(80 categories, e\.g\. \['thing1', "):
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


# --- annotations the configured pipeline cannot use: refused at start-up, naming the ids ------------------
# The tiny dataset: image k (96x128) holds annotations 4k-3 (rectangle, polygon, person), 4k-2 (ellipse,
# compressed RLE, car), 4k-1 (triangle, polygon, dog) and 4k (crowd, uncompressed RLE, person).
def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _rle_of_another_shape(data):
    from pycocotools import mask as mask_utils

    counts = mask_utils.encode(np.asfortranarray(np.ones((96, 100), dtype=np.uint8)))["counts"].decode()
    _ann(data, 2)["segmentation"] = {"size": [96, 128], "counts": counts}  # covers 9600 of 12288 pixels


@pytest.mark.parametrize("edit, message", [
    # mmdet keeps no 'mask' for these; LoadAnnotations(with_mask=True) stops with KeyError: 'mask' when
    # the image comes up
    (lambda d: (_ann(d, 1).pop("segmentation"), _ann(d, 7).update(segmentation=[])),
     r"no 'segmentation': ids \[1\]; empty 'segmentation': ids \[7\] — "
     r"LoadAnnotations\(with_mask=True\) needs a mask for every instance: .* missing_masks='ignore'"),
    # pycocotools decodes an RLE at its own size: the mask would not fit the image
    (lambda d: _ann(d, 2)["segmentation"].update(size=[128, 96]),
     r"RLE size is not the image size \(e\.g\. id 2: size \[128, 96\], image \[height, width\] \[96, 128\]\): "
     r"ids \[2\] — an RLE mask must have the image's size"),
    # run lengths that do not cover the image decode into uninitialised memory
    (lambda d: _ann(d, 4)["segmentation"]["counts"].append(5),
     r"RLE run lengths do not cover the image \(e\.g\. id 4: 12293 pixels, height x width = 12288\): ids \[4\]"),
    (_rle_of_another_shape, r"RLE run lengths do not cover the image \(e\.g\. id 2: 9600 pixels, "),
    (lambda d: _ann(d, 6)["segmentation"].update(counts=_ann(d, 6)["segmentation"]["counts"] + "o"),
     r"RLE counts are not a valid run-length code \(e\.g\. id 6: .*\): ids \[6\]"),
])
def test_annotations_the_pipeline_cannot_use_are_refused_at_start_up(coco_copy, edit, message):
    load_config(ATTO_LIERA)
    path = _edit(coco_copy, edit)
    with pytest.raises(ValueError, match=rf"{path}: annotations the pipeline cannot use: {message}"):
        _dataset(coco_copy)


def test_compressed_rle_total_matches_pycocotools():
    from pycocotools import mask as mask_utils

    from liera_vision.det.data import _compressed_rle_total

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (96, 128), (300, 2)]:
        for density in (0.0, 0.3, 1.0):
            binary = np.asfortranarray((rng.random(shape) < density).astype(np.uint8))
            counts = mask_utils.encode(binary)["counts"].decode()
            assert _compressed_rle_total(counts) == shape[0] * shape[1], (shape, density)
    assert _compressed_rle_total("0o") is None and _compressed_rle_total(b"12") is None


# --- annotations mmdet skips or ignores on purpose: its handling, reported with the ids -------------------
def _flags(ds, index):
    return ds[index]["gt_ignore_flags"].tolist()


@pytest.mark.parametrize("edit, report, image_flags", [
    # polygons of fewer than 3 points: mmdet turns the instance into an ignored region
    (lambda d: _ann(d, 1).update(segmentation=[[10, 10, 20, 20]]), {"degenerate_polygons": [1]},
     [True, False, False, True]),
    # one usable polygon left: mmdet drops the other part and trains the instance
    (lambda d: _ann(d, 1)["segmentation"].append([1, 2]), {"polygon_parts_dropped": [1]},
     [False, False, False, True]),
    # crowd regions given as polygons (COCO uses RLE): ignored regions, as any crowd
    (lambda d: _ann(d, 1).update(iscrowd=1), {}, [True, False, False, True]),
    # skipped by mmdet's CocoDataset: the image keeps the other three instances
    (lambda d: _ann(d, 1).update(bbox=[200.0, 10.0, 5.0, 5.0]), {"outside_image": [1]}, [False, False, True]),
    (lambda d: (_ann(d, 1).update(bbox=[10.0, 10.0, 0.5, 20.0]), _ann(d, 3).update(area=0)), {"too_small": [1, 3]},
     [False, True]),
    (lambda d: _ann(d, 3).update(ignore=True), {"ignore_flag": [3]}, [False, False, True]),
])
def test_annotations_mmdet_skips_or_ignores_are_reported(coco_copy, edit, report, image_flags):
    load_config(ATTO_LIERA)
    _edit(coco_copy, edit)
    ds = _dataset(coco_copy)
    assert ds.annotation_report == report
    assert _flags(ds, 0) == image_flags
    assert _flags(ds, 1) == [False, False, False, True]  # the other images are untouched


def test_dropped_polygon_part_leaves_the_mask_of_the_rest(tiny_coco, coco_copy):
    load_config(ATTO_LIERA)
    _edit(coco_copy, lambda d: _ann(d, 1)["segmentation"].append([1, 2]))
    original, edited = _dataset(tiny_coco)[0]["gt_masks"].masks, _dataset(coco_copy)[0]["gt_masks"].masks
    assert original[0].sum() > 0 and np.array_equal(edited, original)


def test_missing_masks_ignore_trains_them_as_ignored_regions(coco_copy):
    load_config(ATTO_LIERA)
    _edit(coco_copy, lambda d: (_ann(d, 1).pop("segmentation"), _ann(d, 7).update(segmentation=[])))
    ds = _dataset(coco_copy, missing_masks="ignore")
    assert ds.annotation_report == {"no_mask_ignored": [1, 7]}
    assert _flags(ds, 0) == [True, False, False, True] and _flags(ds, 1) == [False, False, True, True]
    assert ds[0]["gt_masks"].masks.shape == (4, 96, 128)  # the pipeline ran: no KeyError: 'mask'
    with pytest.raises(ValueError, match=r"missing_masks must be one of \('error', 'ignore'\), got 'drop'"):
        _dataset(coco_copy, missing_masks="drop")


def test_masks_are_checked_only_when_the_pipeline_loads_them(coco_copy):
    from mmdet.registry import DATASETS

    load_config(ATTO_LIERA)
    _edit(coco_copy, lambda d: (_ann(d, 1).pop("segmentation"), _ann(d, 2)["segmentation"].update(size=[1, 1])))
    ds = DATASETS.build(dict(type="CheckedCocoDataset", data_root=str(coco_copy),
                             ann_file="annotations/instances_train2017.json", data_prefix=dict(img="train2017/"),
                             pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]))
    assert ds.annotation_report == {} and ds[0]["gt_bboxes"].tensor.shape == (4, 4)


def test_rle_masks_under_polygon_masks_are_reported(tiny_coco):
    from mmdet.registry import DATASETS

    load_config(ATTO_LIERA)
    ds = DATASETS.build(dict(type="CheckedCocoDataset", data_root=str(tiny_coco),
                             ann_file="annotations/instances_train2017.json", data_prefix=dict(img="train2017/"),
                             pipeline=[dict(type="LoadImageFromFile"),
                                       dict(type="LoadAnnotations", with_bbox=True, with_mask=True, poly2mask=False)]))
    assert ds.annotation_report == {"rle_ignored": [2, 4, 6, 8, 10, 12, 14, 16]}
    assert _flags(ds, 0) == [False, True, False, True]  # mmdet keeps polygons only


# --- classes: mmdet numbers labels in the file's category order ---------------------------------------
def test_a_class_subset_skips_the_other_categories(tiny_coco):
    load_config(ATTO_LIERA)
    ds = _dataset(tiny_coco, metainfo=dict(classes=("person", "dog")))
    assert ds.annotation_report == {"other_category": [2, 6, 10, 14]}
    assert ds[0]["gt_bboxes_labels"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("classes, message", [
    (("dog", "person"), r"the dataset classes are listed in another order than the file's categories "
                        r"\(\['dog', 'person'\] vs \['person', 'dog'\]\); mmdet numbers labels in the file's order"),
    (("person", "unicorn"), r"the dataset classes \['unicorn'\] are not categories of the file"),
])
def test_classes_that_would_shift_labels_are_an_error(tiny_coco, classes, message):
    load_config(ATTO_LIERA)
    with pytest.raises(ValueError, match=message):
        _dataset(tiny_coco, metainfo=dict(classes=classes))


def test_the_mirror_of_mmdet_rules_fails_loudly_when_mmdet_changes(tiny_coco, monkeypatch):
    """CheckedCocoDataset names the annotations mmdet skips by mirroring its rules; a change is an error."""
    from mmdet.datasets import CocoDataset

    load_config(ATTO_LIERA)
    parse = CocoDataset.parse_data_info

    def stricter(self, raw):
        info = parse(self, raw)
        info["instances"] = info["instances"][:-1]
        return info

    monkeypatch.setattr(CocoDataset, "parse_data_info", stricter)
    with pytest.raises(RuntimeError, match=r"parse_data_info kept 3 of the 4 annotations of image 1, "
                                           r"CheckedCocoDataset._skip_reason 4"):
        _dataset(tiny_coco)


# --- the metric: pycocotools' 'segm' evaluation needs a mask for every annotation ------------------------
def _metric(ann_file, metric=("bbox", "segm")):
    from mmdet.registry import METRICS

    return METRICS.build(dict(type="CheckedCocoMetric", ann_file=str(ann_file), metric=list(metric)))


def test_metric_refuses_annotations_pycocotools_cannot_score(coco_copy):
    load_config(ATTO_LIERA)

    def edit(d):
        _ann(d, 1).pop("segmentation")
        _ann(d, 7).update(segmentation=[])
        _ann(d, 3).update(segmentation=[[1, 2], [10, 10, 30, 10, 30, 30]])
        _ann(d, 2)["segmentation"].update(size=[128, 96])
        _ann(d, 8).update(ignore=True, area=0)  # skipped by mmdet, scored by pycocotools all the same
        _ann(d, 8).pop("segmentation")

    path = _edit(coco_copy, edit)
    with pytest.raises(ValueError, match=rf"{path}: pycocotools cannot score these annotations for \['bbox', 'segm'\]: "
                                         r"no 'segmentation': ids \[1, 8\]; RLE size is not the image size: ids \[2\]; "
                                         r"polygons pycocotools cannot read \(input type is not supported\.\): "
                                         r"ids \[3\]; empty 'segmentation': ids \[7\] — every annotation needs"):
        _metric(path)
    assert _metric(path, metric=["bbox"]).metrics == ["bbox"]  # boxes only: nothing to check


def test_metric_builds_on_a_good_file(tiny_coco):
    load_config(ATTO_LIERA)
    metric = _metric(tiny_coco / "annotations/instances_val2017.json")
    assert type(metric).__name__ == "CheckedCocoMetric" and metric.metrics == ["bbox", "segm"]
