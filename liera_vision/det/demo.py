"""A tiny generated COCO-format instance dataset (for smoke runs and tests; nothing is downloaded).

``write_tiny_coco(root)`` lays it out like COCO 2017 — ``annotations/instances_{train,val}2017.json``,
``train2017/``, ``val2017/`` — so a config only needs its data root pointed at ``root``. Each image
holds a few solid shapes; rectangles and triangles carry polygon masks, ellipses compressed RLE
masks, and one crowd region an uncompressed RLE mask, as in COCO itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# (COCO category name, id) pairs used by the shapes; the file lists all 80 COCO categories
SHAPE_CATEGORIES = {"rectangle": "person", "ellipse": "car", "triangle": "dog"}


def coco_categories() -> list[dict]:
    from mmdet.datasets import CocoDataset

    return [{"id": i + 1, "name": name, "supercategory": "thing"}
            for i, name in enumerate(CocoDataset.METAINFO["classes"])]


def write_tiny_coco(root: str | os.PathLike, num_images: int = 4, size: tuple[int, int] = (96, 128),
                    seed: int = 0) -> Path:
    """Write the dataset under ``root`` (train and val hold the same images) and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = coco_categories()
    cat_id = {c["name"]: c["id"] for c in categories}
    height, width = size
    images, annotations = [], []
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for img_id in range(1, num_images + 1):
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(canvas)
        for shape in SHAPE_CATEGORIES:
            x0, y0 = int(rng.integers(2, width // 2)), int(rng.integers(2, height // 2))
            w, h = int(rng.integers(width // 5, width // 2)), int(rng.integers(height // 5, height // 2))
            x1, y1 = min(x0 + w, width - 1), min(y0 + h, height - 1)
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            mask_img = Image.new("L", (width, height), 0)
            mask_draw = ImageDraw.Draw(mask_img)
            if shape == "rectangle":
                polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
            elif shape == "triangle":
                polygon = [x0, y1, (x0 + x1) / 2, y0, x1, y1]
            else:
                polygon = None
            if polygon is None:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
                mask_draw.ellipse([x0, y0, x1, y1], fill=1)
            else:
                draw.polygon(polygon, fill=colour)
                mask_draw.polygon(polygon, fill=1)
            binary = np.asfortranarray(np.array(mask_img, dtype=np.uint8))
            rle = mask_utils.encode(binary)
            if polygon is None:
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = [[float(v) for v in polygon]]
            annotations.append(_annotation(len(annotations) + 1, img_id, cat_id[SHAPE_CATEGORIES[shape]],
                                           segmentation, rle))
        # a crowd region with an uncompressed RLE mask (COCO's format for iscrowd=1)
        crowd = np.zeros((height, width), dtype=np.uint8, order="F")
        crowd[height - 12:height - 2, 2:width // 4] = 1
        draw.rectangle([2, height - 12, width // 4 - 1, height - 3], fill=(60, 200, 60))
        annotations.append(_annotation(len(annotations) + 1, img_id, cat_id["person"],
                                       {"size": [height, width], "counts": _uncompressed_counts(crowd)},
                                       mask_utils.encode(crowd), iscrowd=1))
        name = f"{img_id:012d}.jpg"
        for split in ("train2017", "val2017"):
            canvas.save(root / split / name, quality=95)
        images.append({"id": img_id, "file_name": name, "height": height, "width": width})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _annotation(ann_id: int, img_id: int, category_id: int, segmentation, rle: dict, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": img_id, "category_id": category_id, "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": iscrowd}


def _uncompressed_counts(binary: np.ndarray) -> list[int]:
    """Run lengths of a binary mask in column-major order, starting with a run of zeros."""
    flat = binary.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return counts if flat[0] == 0 else [0, *counts]
