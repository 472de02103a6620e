"""Procedurally generated tasks written in the exact NOAH / VTAB-1k folder layout (demo and tests).

Four small tasks in the spirit of VTAB's groups (see ``SYNTHETIC_TASKS`` in :mod:`.tasks`):
``synth_shape`` (which shape: natural), ``synth_count`` (how many objects, like clevr_count),
``synth_position`` (horizontal position bin, like dsprites_loc) and ``synth_orientation``
(orientation bin of a bar, like dsprites_ori); 4 classes each, balanced, on noisy coloured
backgrounds. Generation is deterministic in ``seed`` and cached: a task folder carries a
``.complete`` manifest of its parameters and is written to a temporary folder first, then
renamed into place, so an interrupted generation never leaves a half task behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .tasks import SUITES, TASKS

VERSION = 1
DEFAULT_SIZES = {"train800": 160, "val200": 40, "test": 200}
MANIFEST = ".complete"


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(0, 255, 3)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-40, 40, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))


def _color(rng: np.random.Generator, avoid: Image.Image) -> tuple[int, int, int]:
    """A colour far from the background's mean, so objects stay visible."""
    mean = np.asarray(avoid).reshape(-1, 3).mean(0)
    color = np.where(mean > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3))
    return tuple(int(c) for c in color)


def _shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float, color) -> None:
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)


def _bar(draw: ImageDraw.ImageDraw, cx: float, cy: float, length: float, width: float, angle: float, color) -> None:
    dx, dy = math.cos(angle), math.sin(angle)
    px, py = -dy * width / 2, dx * width / 2
    hx, hy = dx * length / 2, dy * length / 2
    draw.polygon([(cx - hx + px, cy - hy + py), (cx + hx + px, cy + hy + py),
                  (cx + hx - px, cy + hy - py), (cx - hx - px, cy - hy - py)], fill=color)


def draw_sample(task: str, label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``task`` with class ``label``."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    color = _color(rng, image)
    if task == "synth_shape":
        r = size * rng.uniform(0.18, 0.3)
        cx, cy = rng.uniform(r, size - r, 2)
        _shape(draw, label, cx, cy, r, color)
    elif task == "synth_count":
        r = size * 0.08
        centres: list[np.ndarray] = []
        while len(centres) < label + 1:  # rejection sampling keeps the objects apart
            c = rng.uniform(r + 1, size - r - 1, 2)
            if all(np.hypot(*(c - o)) > 2.6 * r for o in centres):
                centres.append(c)
        for c in centres:
            _shape(draw, int(rng.integers(0, 4)), c[0], c[1], r, color)
    elif task == "synth_position":
        r = size * 0.1
        width = (size - 2 * r) / 4
        cx = r + width * (label + rng.uniform(0.1, 0.9))
        cy = rng.uniform(r, size - r)
        _shape(draw, int(rng.integers(0, 4)), cx, cy, r, color)
    elif task == "synth_orientation":
        angle = math.pi / 4 * (label + rng.uniform(0.1, 0.9))  # four 45° bins over [0°, 180°)
        cx, cy = rng.uniform(0.35 * size, 0.65 * size, 2)
        _bar(draw, cx, cy, size * 0.6, size * 0.12, angle, color)
    else:
        raise ValueError(f"no generator for task {task!r}; synthetic tasks: {SUITES['synthetic']}")
    return image


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _write_task(folder: Path, task: str, image_size: int, sizes: dict[str, int], seed: int) -> None:
    classes = TASKS[task].num_classes
    lines: dict[str, list[str]] = {}
    for split, count in sizes.items():
        rng = np.random.default_rng(_seed(VERSION, seed, task, split))
        labels = rng.permutation(np.arange(count) % classes)
        (folder / "images" / split).mkdir(parents=True)
        lines[split] = []
        for i, label in enumerate(labels.tolist()):
            rel = f"images/{split}/{i:06d}.jpg"
            draw_sample(task, label, image_size, rng).save(folder / rel, quality=95)
            lines[split].append(f"{rel} {label}")
    # train800val200 is the union of train800 and val200, as in NOAH's folders (its own image copies)
    union = folder / "images" / "train800val200"
    union.mkdir()
    lines["train800val200"] = []
    for split in ("train800", "val200"):
        for line in lines[split]:
            rel, label = line.rsplit(maxsplit=1)
            name = f"{split}_{Path(rel).name}"
            shutil.copyfile(folder / rel, union / name)
            lines["train800val200"].append(f"images/train800val200/{name} {label}")
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")


def generate(root: str | os.PathLike, tasks: list[str] | None = None, *, image_size: int = 64,
             sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write the synthetic ``tasks`` (default: all four) under ``root`` in NOAH layout; cached by parameters.

    ``sizes`` gives the image count of ``train800``, ``val200`` and ``test`` (``train800val200`` is
    their union). A task folder generated with other parameters is an error, not overwritten.
    """
    root = Path(root)
    tasks = list(tasks or SUITES["synthetic"])
    sizes = dict(sizes or DEFAULT_SIZES)
    if set(sizes) != set(DEFAULT_SIZES) or min(sizes.values()) < 1:
        raise ValueError(f"sizes must give a positive count for each of {list(DEFAULT_SIZES)}, got {sizes}")
    for task in tasks:
        if task not in SUITES["synthetic"]:
            raise ValueError(f"no generator for task {task!r}; synthetic tasks: {SUITES['synthetic']}")
        manifest = {"version": VERSION, "task": task, "image_size": image_size, "sizes": sizes, "seed": seed}
        folder = root / task
        done = folder / MANIFEST
        if done.is_file():
            if json.loads(done.read_text()) != manifest:
                raise ValueError(f"{folder} was generated with other parameters ({done.read_text().strip()}); "
                                 f"wanted {json.dumps(manifest)}; use another root or delete it")
            continue
        if folder.exists():
            raise ValueError(f"{folder} exists but is not a finished synthetic task (no {MANIFEST}); delete it")
        tmp = root / f".{task}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _write_task(tmp, task, image_size, sizes, seed)
            (tmp / MANIFEST).write_text(json.dumps(manifest) + "\n")
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_cache_dir(image_size: int, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``$XDG_CACHE_HOME/liera-vision/vtab-synthetic/<parameters>`` (``~/.cache`` by default)."""
    sizes = dict(sizes or DEFAULT_SIZES)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liera-vision" / "vtab-synthetic"
    tag = f"v{VERSION}-{image_size}px-" + "-".join(str(sizes[s]) for s in DEFAULT_SIZES) + f"-seed{seed}"
    return base / tag
