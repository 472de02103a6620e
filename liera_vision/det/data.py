"""``CheckedCocoDataset`` / ``CheckedCocoMetric``: mmdet's COCO dataset and metric, checked at start-up.

mmdet reads a malformed file with pycocotools (a bare ``JSONDecodeError`` / ``KeyError`` without
the file name), finds a missing image only when a worker loads it, and meets an annotation its
pipeline cannot use (an instance without a mask under ``LoadAnnotations(with_mask=True)``, an RLE
mask of another size) only when that image comes up in training, possibly hours in; pycocotools'
``segm`` evaluation fails on such annotations after the first epoch. These checks run once, when
the dataset and the metric are built, and name the file, the annotation ids and what was expected.

What mmdet deliberately skips (boxes outside the image or under one pixel, ``ignore`` flags,
categories outside the dataset's classes) or turns into ignored regions (polygons with fewer than
three points) it still does; the dataset logs how many annotations that touched, with their ids,
and keeps them in :attr:`CheckedCocoDataset.annotation_report`. ``docs/coco.md`` lists every case.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from numbers import Number

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.datasets.transforms import LoadAnnotations
from mmdet.evaluation import CocoMetric
from mmdet.registry import DATASETS, METRICS
from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from pycocotools import mask as mask_utils

MAX_REPORTED = 5
MISSING_MASKS = ("error", "ignore")

# What mmdet does with annotations it cannot or will not train on (CocoDataset.parse_data_info and
# LoadAnnotations._process_masks in mmdet 3.3), as (log level, description) per kind.
HANDLED = {
    "ignore_flag": ("INFO", "carry 'ignore': true and are skipped"),
    "other_category": ("INFO", "belong to categories outside the dataset's classes and are skipped"),
    "outside_image": ("WARNING", "have a box outside the image and are skipped"),
    "too_small": ("WARNING", "have zero area or a box under 1 pixel wide or high and are skipped"),
    "no_mask_ignored": ("WARNING", "have no mask and train as ignored regions (missing_masks='ignore')"),
    "degenerate_polygons": ("WARNING", "have only polygons of fewer than 3 points and train as ignored regions"),
    "polygon_parts_dropped": ("WARNING", "have polygon parts of fewer than 3 points, which are dropped"),
    "rle_ignored": ("WARNING", "have RLE masks, which LoadAnnotations(poly2mask=False) turns into ignored regions"),
}


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
        raise ValueError(f"malformed COCO annotation file {path}: {_listing(problems)}")
    return data


def coco_problems(data) -> list[str]:
    """What is wrong with the structure of a COCO instances dict (empty when nothing is)."""
    if not isinstance(data, dict):
        return [f"expected a JSON object with 'images', 'annotations' and 'categories', got {type(data).__name__}"]
    problems = [f"'{key}' must be a list" for key in ("images", "categories")
                if not isinstance(data.get(key), list)]
    if not isinstance(data.get("annotations", []), list):
        problems.append("'annotations' must be a list")
    if problems:
        return problems
    image_ids, category_ids, category_names, annotation_ids = set(), set(), {}, set()
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
            continue
        if cat["id"] in category_ids:
            problems.append(f"categories[{i}]: duplicate category id {cat['id']}")
        if cat["name"] in category_names:  # mmdet maps names to ids: two ids for one class shift every label
            problems.append(f"categories[{i}] (id {cat['id']}): duplicate category name {cat['name']!r} "
                            f"(also id {category_names[cat['name']]})")
        category_ids.add(cat["id"])
        category_names.setdefault(cat["name"], cat["id"])
    for i, ann in enumerate(data.get("annotations", [])):
        ann_id = ann.get("id") if isinstance(ann, dict) else "?"
        problems += [f"annotations[{i}] (id {ann_id}): {p}" for p in _annotation_problems(ann, image_ids, category_ids)]
        if isinstance(ann_id, int):
            if ann_id in annotation_ids:  # pycocotools indexes by id: a duplicate replaces the other annotation
                problems.append(f"annotations[{i}]: duplicate annotation id {ann_id}")
            annotation_ids.add(ann_id)
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
    if ann.get("iscrowd", 0) not in (0, 1):  # mmdet and pycocotools test its truth: "0" would mean a crowd
        problems.append(f"'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
    if "segmentation" in ann and not _valid_segmentation(ann["segmentation"]):
        problems.append("'segmentation' must be a list of polygons (lists of x, y numbers) or an RLE "
                        f"{{'size': [height, width], 'counts': str or list of int}}, got {_short(ann['segmentation'])}")
    return problems


def _valid_segmentation(seg) -> bool:
    if isinstance(seg, list):  # polygons; what the pipeline can use is judged by the dataset (mask_problem)
        return all(isinstance(poly, list) and all(_finite(v) for v in poly) for poly in seg)
    if isinstance(seg, dict):  # RLE, compressed (str) or not (list of run lengths)
        size, counts = seg.get("size"), seg.get("counts")
        return (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)
                and (isinstance(counts, str) or (isinstance(counts, list) and all(isinstance(v, int) for v in counts))))
    return False


def rle_problem(rle: dict, height: int, width: int) -> tuple[str, str] | None:
    """``(kind, detail)`` saying why ``rle`` (a structurally valid COCO RLE) is not a mask of a ``height x width``
    image, or ``None`` when it is one.

    pycocotools decodes an RLE at its own ``size`` and trusts its run lengths: another size gives a
    mask that does not fit the image, run lengths that do not add up to ``height * width`` give a
    mask filled from uninitialised memory (or an error).
    """
    if list(rle["size"]) != [height, width]:
        return "RLE size is not the image size", f"size {rle['size']}, image [height, width] [{height}, {width}]"
    counts = rle["counts"]
    total = sum(counts) if isinstance(counts, list) and min(counts, default=0) >= 0 else _compressed_rle_total(counts)
    if total is None:
        return "RLE counts are not a valid run-length code", _short(counts, 40)
    if total != height * width:
        return "RLE run lengths do not cover the image", f"{total} pixels, height x width = {height * width}"
    return None


def _compressed_rle_total(counts) -> int | None:
    """The number of pixels a compressed COCO RLE string covers (``None`` if it is not valid).

    The decoding of pycocotools' ``rleFrString`` (common/maskApi.c): each run length is a
    little-endian sequence of 5-bit groups stored as ``chr(48 + group)``, bit 0x20 marking that
    more groups follow, 0x10 in the last group the sign; from the third run on, each value is a
    difference to the run two places before.
    """
    if not isinstance(counts, str):
        return None
    runs, p = [], 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p == len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


def polygon_parts(polygons: list) -> tuple[int, int]:
    """(usable, degenerate) polygon counts under mmdet's rule: an even number of >= 6 coordinates.

    mmdet 3.3's ``LoadAnnotations._process_masks`` drops the others and turns an instance with none
    left into an ignored region.
    """
    usable = sum(1 for poly in polygons if len(poly) % 2 == 0 and len(poly) >= 6)
    return usable, len(polygons) - usable


def _finite(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _listing(items: list, limit: int = MAX_REPORTED) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(str(i) for i in items[:limit]) + more


def _eg(detail: str | None) -> str:
    return f" (e.g. {detail})" if detail else ""


def _ids(ids: list) -> str:
    return f"{ids[:MAX_REPORTED]}" + (f" and {len(ids) - MAX_REPORTED} more" if len(ids) > MAX_REPORTED else "")


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that checks its annotation file, its categories, its images and its masks at start-up.

    Args:
        missing_masks: what to do, when the pipeline loads masks (``LoadAnnotations(with_mask=True)``),
            with an instance that has no ``segmentation`` or an empty one — mmdet 3.3 itself stops
            with ``KeyError: 'mask'`` when that image comes up. ``'error'`` (default): refuse at
            start-up, naming the annotation ids. ``'ignore'``: train them as ignored regions (no
            box or mask loss), mmdet's own handling of polygons it cannot use.
        *args, **kwargs: those of ``CocoDataset``.

    Raises ``ValueError`` / ``FileNotFoundError`` naming the file (see ``docs/coco.md``).

    After loading, :attr:`annotation_report` maps each kind of annotation mmdet skips or ignores
    (the keys of :data:`HANDLED`) to the ids it touched.
    """

    def __init__(self, *args, missing_masks: str = "error", **kwargs) -> None:
        if missing_masks not in MISSING_MASKS:
            raise ValueError(f"CheckedCocoDataset: missing_masks must be one of {MISSING_MASKS}, got {missing_masks!r}")
        self.missing_masks = missing_masks
        self.annotation_report: dict[str, list[int]] = {}
        super().__init__(*args, **kwargs)

    # --- loading -------------------------------------------------------------------------------
    def load_data_list(self) -> list[dict]:
        self._mask_loader = next((t for t in getattr(self.pipeline, "transforms", [])
                                  if isinstance(t, LoadAnnotations) and t.with_mask), None)
        self._handled, self._unusable, self._details = defaultdict(list), defaultdict(list), {}
        self._categories = None
        data_list = super().load_data_list()
        self._check_categories()
        if self._unusable:
            raise ValueError(f"{self.ann_file}: annotations the pipeline cannot use: "
                             + "; ".join(f"{what}{_eg(self._details.get(what))}: ids {_ids(ids)}"
                                         for what, ids in self._unusable.items())
                             + self._unusable_hint())
        self.annotation_report = {k: v for k, v in self._handled.items() if v}
        for kind, ids in self.annotation_report.items():
            level, what = HANDLED[kind]
            print_log(f"{self.ann_file}: {len(ids)} annotations {what} (mmdet's handling): ids {_ids(ids)}",
                      logger="current", level=logging.getLevelName(level))
        if self.backend_args is None or self.backend_args.get("backend", "local") == "local":
            missing = [d["img_path"] for d in data_list if not os.path.isfile(d["img_path"])]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of the {len(data_list)} images listed in {self.ann_file} "
                                        f"are missing, e.g. {missing[:MAX_REPORTED]} (data_prefix "
                                        f"{self.data_prefix.get('img')!r})")
        return data_list

    def COCOAPI(self, path):  # CocoDataset calls self.COCOAPI(path) for its COCO object
        coco = CheckedCOCO(path)
        self._categories = coco.dataset["categories"]
        return coco

    def parse_data_info(self, raw_data_info: dict) -> dict:
        info = super().parse_data_info(raw_data_info)
        img = raw_data_info["raw_img_info"]
        kept = []
        for ann in raw_data_info["raw_ann_info"]:
            reason = self._skip_reason(ann, img)
            if reason is None:
                kept.append(ann)
            else:
                self._handled[reason].append(ann["id"])
        if len(kept) != len(info["instances"]):  # mmdet changed its rules: this mirror must follow
            raise RuntimeError(f"CheckedCocoDataset: mmdet's CocoDataset.parse_data_info kept {len(info['instances'])} "
                               f"of the {len(raw_data_info['raw_ann_info'])} annotations of image {img['id']}, "
                               f"CheckedCocoDataset._skip_reason {len(kept)}; update it to the installed mmdet")
        if self._mask_loader is not None:
            for ann, instance in zip(kept, info["instances"]):
                self._check_mask(ann, instance, img)
        return info

    def _skip_reason(self, ann: dict, img: dict) -> str | None:
        """Why mmdet 3.3's ``CocoDataset.parse_data_info`` skips ``ann`` (its rules, in its order)."""
        if ann.get("ignore", False):
            return "ignore_flag"
        x1, y1, w, h = ann["bbox"]
        inter_w = max(0, min(x1 + w, img["width"]) - max(x1, 0))
        inter_h = max(0, min(y1 + h, img["height"]) - max(y1, 0))
        if inter_w * inter_h == 0:
            return "outside_image"
        if ann["area"] <= 0 or w < 1 or h < 1:
            return "too_small"
        if ann["category_id"] not in self.cat_ids:
            return "other_category"
        return None

    def _check_mask(self, ann: dict, instance: dict, img: dict) -> None:
        seg = ann.get("segmentation")
        if not seg:  # mmdet keeps no 'mask' for it: LoadAnnotations fails with KeyError: 'mask'
            if self.missing_masks == "error":
                self._unusable["no 'segmentation'" if "segmentation" not in ann else "empty 'segmentation'"].append(
                    ann["id"])
            else:
                instance["mask"], instance["ignore_flag"] = [], 1  # mmdet's own path for an unusable polygon list
                self._handled["no_mask_ignored"].append(ann["id"])
        elif isinstance(seg, list):
            usable, degenerate = polygon_parts(seg)
            if degenerate:
                self._handled["polygon_parts_dropped" if usable else "degenerate_polygons"].append(ann["id"])
        elif not self._mask_loader.poly2mask:  # mmdet keeps polygons only: an RLE instance becomes ignored
            self._handled["rle_ignored"].append(ann["id"])
        else:
            problem = rle_problem(seg, img["height"], img["width"])
            if problem is not None:
                self._unusable[problem[0]].append(ann["id"])
                self._details.setdefault(problem[0], f"id {ann['id']}: {problem[1]}")

    def _unusable_hint(self) -> str:
        hints = []
        if any("segmentation" in what for what in self._unusable):
            hints.append("LoadAnnotations(with_mask=True) needs a mask for every instance: add the masks, remove "
                         "those annotations, train boxes only (with_mask=False), or set the dataset's "
                         "missing_masks='ignore' to train them as ignored regions")
        if any("RLE" in what for what in self._unusable):
            hints.append("an RLE mask must have the image's size [height, width] and run lengths that cover it")
        return " — " + "; ".join(hints)

    def _check_categories(self) -> None:
        """mmdet labels category ``cat_ids[i]`` as class ``i``, ``cat_ids`` in the file's order: check they agree."""
        classes = list(self.metainfo["classes"])
        names = [c["name"] for c in self._categories or []]
        absent = [c for c in classes if c not in names]
        if absent:
            raise ValueError(f"{self.ann_file}: the dataset classes {_short(absent, 120)} are not categories of the "
                             f"file ({len(names)} categories, e.g. {names[:MAX_REPORTED]}); mmdet would shift every "
                             "later label. Set metainfo=dict(classes=...) on the dataset to the file's category "
                             "names (and num_classes of the heads to their number)")
        in_file_order = [n for n in names if n in classes]
        if in_file_order != classes:
            raise ValueError(f"{self.ann_file}: the dataset classes are listed in another order than the file's "
                             f"categories ({_short(classes, 120)} vs {_short(in_file_order, 120)}); mmdet numbers "
                             "labels in the file's order, so class names would not match the labels. List "
                             "metainfo classes in the file's order")


# --- the metric ----------------------------------------------------------------------------------
def evaluation_problems(data: dict, metrics) -> list[str]:
    """Annotations of a checked COCO dict that pycocotools cannot score for ``metrics`` ('bbox', 'segm', ...).

    ``'segm'`` turns every annotation of the evaluated images into a mask with pycocotools'
    ``COCO.annToRLE`` — crowd and skipped ones included — which fails or misreads on a missing or
    empty ``segmentation``, on polygons it cannot read and on RLE masks that do not fit the image.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if "segm" not in metrics:
        return []
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    problems = defaultdict(list)
    for ann in data.get("annotations", []):
        seg, (height, width) = ann.get("segmentation"), sizes[ann["image_id"]]
        if not seg:
            problem = "no 'segmentation'" if "segmentation" not in ann else "empty 'segmentation'"
        elif isinstance(seg, list):
            try:
                mask_utils.frPyObjects(seg, height, width)
                problem = None
            except Exception as err:  # pycocotools raises a bare Exception, TypeError or IndexError
                problem = f"polygons pycocotools cannot read ({str(err).strip()[:60] or type(err).__name__})"
        else:
            problem = rle_problem(seg, height, width)
            problem = problem and problem[0]
        if problem is not None:
            problems[problem].append(ann["id"])
    return [f"{what}: ids {_ids(ids)}" for what, ids in problems.items()]


@METRICS.register_module()
class CheckedCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric``, its annotation file checked when the metric is built (at the start of a run).

    Without the check a file that pycocotools cannot score fails only at the first evaluation,
    after an epoch of training. Raises ``ValueError`` naming the file and the annotation ids.
    Every argument is ``CocoMetric``'s.
    """

    def __init__(self, ann_file: str | None = None, metric="bbox", backend_args: dict | None = None,
                 **kwargs) -> None:
        if ann_file is not None:
            with get_local_path(ann_file, backend_args=backend_args) as local_path:
                problems = evaluation_problems(read_coco_annotations(local_path), metric)
            if problems:
                raise ValueError(f"{ann_file}: pycocotools cannot score these annotations for {metric!r}: "
                                 f"{_listing(problems)} — every annotation needs a mask of its image's size for "
                                 "'segm' (evaluate 'bbox' only, or fix the file)")
        super().__init__(ann_file=ann_file, metric=metric, backend_args=backend_args, **kwargs)
