"""``CheckedCocoDataset``: mmdet's ``CocoDataset`` with up-front checks of the annotation file and the images.

mmdet reads a malformed file with pycocotools (a bare ``JSONDecodeError`` / ``KeyError`` without
the file name) and finds a missing image only when a worker loads it, possibly hours in. These
checks run once at start-up and name the file, the entry and what was expected.
"""

from __future__ import annotations

import json
import math
import os
from numbers import Number

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS

MAX_REPORTED = 5


class CheckedCOCO(COCO):
    """mmdet's COCO API over :func:`read_coco_annotations` (a checked file)."""

    def __init__(self, annotation_file=None):
        super().__init__(None)
        if annotation_file is not None:
            self.dataset = read_coco_annotations(annotation_file)
            self.createIndex()
            self.img_ann_map = self.imgToAnns
            self.cat_img_map = self.catToImgs


def read_coco_annotations(path: str | os.PathLike) -> dict:
    """The parsed COCO instances file; ``ValueError`` naming the file and the first bad entries."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {err.msg} at line {err.lineno}, "
                         f"column {err.colno}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"COCO annotation file {path} is not UTF-8 text ({err.reason})") from err
    problems = coco_problems(data)
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise ValueError(f"malformed COCO annotation file {path}: " + "; ".join(problems[:MAX_REPORTED]) + more)
    return data


def coco_problems(data) -> list[str]:
    """What is wrong with a COCO instances dict (empty when nothing is)."""
    if not isinstance(data, dict):
        return [f"expected a JSON object with 'images', 'annotations' and 'categories', got {type(data).__name__}"]
    problems = [f"'{key}' must be a list" for key in ("images", "categories")
                if not isinstance(data.get(key), list)]
    if not isinstance(data.get("annotations", []), list):
        problems.append("'annotations' must be a list")
    if problems:
        return problems
    image_ids, category_ids = set(), set()
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            problems.append(f"{where} needs an integer 'id' and a string 'file_name', got {_short(img)}")
            continue
        if img["id"] in image_ids:
            problems.append(f"{where}: duplicate image id {img['id']}")
        image_ids.add(img["id"])
        if not all(isinstance(img.get(k), int) and img[k] > 0 for k in ("width", "height")):
            problems.append(f"{where} (id {img['id']}): 'width' and 'height' must be positive integers, "
                            f"got {img.get('width')!r} x {img.get('height')!r}")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.append(f"categories[{i}] needs an integer 'id' and a string 'name', got {_short(cat)}")
        else:
            category_ids.add(cat["id"])
    for i, ann in enumerate(data.get("annotations", [])):
        problems += [f"annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'}): {p}"
                     for p in _annotation_problems(ann, image_ids, category_ids)]
    return problems


def _annotation_problems(ann, image_ids: set, category_ids: set) -> list[str]:
    if not isinstance(ann, dict):
        return [f"expected an object, got {_short(ann)}"]
    problems = []
    if not isinstance(ann.get("id"), int):
        problems.append(f"'id' must be an integer, got {ann.get('id')!r}")
    if ann.get("image_id") not in image_ids:
        problems.append(f"'image_id' {ann.get('image_id')!r} is not the id of any entry in 'images'")
    if ann.get("category_id") not in category_ids:
        problems.append(f"'category_id' {ann.get('category_id')!r} is not the id of any entry in 'categories'")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox) and min(bbox[2:]) >= 0):
        problems.append(f"'bbox' must be [x, y, width, height] (4 finite numbers, width and height >= 0), got {bbox!r}")
    if not _finite(ann.get("area")):
        problems.append(f"'area' must be a number, got {ann.get('area')!r}")
    if "segmentation" in ann and not _valid_segmentation(ann["segmentation"]):
        problems.append("'segmentation' must be a list of polygons (lists of x, y numbers) or an RLE "
                        f"{{'size': [height, width], 'counts': str or list of int}}, got {_short(ann['segmentation'])}")
    return problems


def _valid_segmentation(seg) -> bool:
    if isinstance(seg, list):  # polygons; degenerate ones (< 3 points) are ignored by mmdet, as in COCO itself
        return all(isinstance(poly, list) and all(_finite(v) for v in poly) for poly in seg)
    if isinstance(seg, dict):  # RLE, compressed (str) or not (list of run lengths)
        size, counts = seg.get("size"), seg.get("counts")
        return (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)
                and (isinstance(counts, str) or (isinstance(counts, list) and all(isinstance(v, int) for v in counts))))
    return False


def _finite(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that checks its annotation file and that every listed local image exists."""

    COCOAPI = CheckedCOCO

    def load_data_list(self) -> list[dict]:
        data_list = super().load_data_list()
        if not self.cat_ids:
            raise ValueError(f"{self.ann_file}: none of its categories is one of the {len(self.metainfo['classes'])} "
                             f"dataset classes {list(self.metainfo['classes'][:5])}…; for other classes set "
                             "metainfo=dict(classes=...) on the dataset")
        if self.backend_args is None or self.backend_args.get("backend", "local") == "local":
            missing = [d["img_path"] for d in data_list if not os.path.isfile(d["img_path"])]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of the {len(data_list)} images listed in {self.ann_file} "
                                        f"are missing, e.g. {missing[:MAX_REPORTED]} (data_prefix "
                                        f"{self.data_prefix.get('img')!r})")
        return data_list
