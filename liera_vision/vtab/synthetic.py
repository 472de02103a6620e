"""Procedurally generated tasks written in the exact NOAH / VTAB-1k folder layout (tests, transfer study).

Four small tasks in the spirit of VTAB's groups (the ``synthetic`` suite of :mod:`.tasks`):
``synth_shape`` (which shape: natural), ``synth_count`` (how many objects, like clevr_count),
``synth_position`` (horizontal position bin, like dsprites_loc) and ``synth_orientation``
(orientation bin of a bar, like dsprites_ori); 4 classes each, balanced, on noisy coloured
backgrounds. Two more serve the transfer study (``benchmarks/transfer_study.py``):
``synth_texture`` (which of 4 textures covers the image: specialized, like eurosat) and
``synth_source`` (which of 10 rotated shapes: its pre-training task).

Generation is deterministic in ``seed`` and cached (:func:`liera_vision.vtab.noah.cached_task`:
a ``.complete`` manifest of the parameters, written to a temporary folder first, then renamed into
place, so an interrupted generation never leaves a half task behind). The demo itself runs on real
images (:mod:`.realdata`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .noah import MANIFEST, cached_task, seeded_rng, write_split, write_split_files
from .tasks import SUITES, TASKS

VERSION = 1
DEFAULT_SIZES = {"train800": 160, "val200": 40, "test": 200}
# generated tasks outside the registered suite (the transfer study's): name -> class count
EXTRA_TASKS = {"synth_texture": 4, "synth_source": 10}
__all__ = ["DEFAULT_SIZES", "EXTRA_TASKS", "MANIFEST", "VERSION", "default_cache_dir", "draw_sample", "generate",
           "num_classes"]


def _background_pixels(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour with a linear ramp and Gaussian noise: ``(size, size, 3)`` float, not yet clipped."""
    base = rng.uniform(0, 255, 3)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-40, 40, 3)
    return base + ramp + rng.normal(0, 18, (size, size, 3))


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    return _to_image(_background_pixels(rng, size))


def _color(rng: np.random.Generator, avoid) -> tuple[int, int, int]:
    """A colour far from the mean of ``avoid`` (an image or a pixel array), so objects stay visible."""
    mean = np.asarray(avoid, dtype=np.float64).reshape(-1, 3).mean(0)
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


def _polygon(cx: float, cy: float, radii: list[float], start: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, **kwargs) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], **kwargs)


def draw_source(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """``synth_source``: which of ten shapes, at a random place, size and rotation.

    triangle, square, circle, star, ring, cross, elongated ellipse, half disc, frame, pair of dots.
    """
    background = _background_pixels(rng, size)
    image = _to_image(background)
    draw, color = ImageDraw.Draw(image), _color(rng, background)
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = rng.uniform(r, size - r, 2)
    start = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(start), math.sin(start)
    if label in (0, 1):  # triangle, square
        draw.polygon(_polygon(cx, cy, [r] * (label + 3), start), fill=color)
    elif label == 2:
        _disc(draw, cx, cy, r, fill=color)
    elif label == 3:  # five-pointed star
        draw.polygon(_polygon(cx, cy, [r, 0.4 * r] * 5, start), fill=color)
    elif label == 4:  # ring
        _disc(draw, cx, cy, r, outline=color, width=max(2, round(0.3 * r)))
    elif label == 5:  # cross: two bars at right angles
        w = 0.3 * r
        for dx, dy in ((c * r, s * r), (-s * r, c * r)):
            px, py = -dy * w / r, dx * w / r
            draw.polygon([(cx - dx + px, cy - dy + py), (cx + dx + px, cy + dy + py),
                          (cx + dx - px, cy + dy - py), (cx - dx - px, cy - dy - py)], fill=color)
    elif label == 6:  # ellipse, 2.2:1
        angles = [2 * math.pi * i / 24 for i in range(24)]
        draw.polygon([(cx + r * math.cos(a) * c - 0.45 * r * math.sin(a) * s,
                       cy + r * math.cos(a) * s + 0.45 * r * math.sin(a) * c) for a in angles], fill=color)
    elif label == 7:  # half disc
        draw.polygon([(cx + r * math.cos(start + math.pi * i / 16), cy + r * math.sin(start + math.pi * i / 16))
                      for i in range(17)], fill=color)
    elif label == 8:  # frame: a square outline
        draw.polygon(_polygon(cx, cy, [r] * 4, start), outline=color, width=max(2, round(0.25 * r)))
    else:  # pair of dots
        for sign in (-1, 1):
            _disc(draw, cx + sign * 0.6 * r * c, cy + sign * 0.6 * r * s, 0.35 * r, fill=color)
    return image


def draw_texture(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """``synth_texture``: which texture covers the image (stripes, checkerboard, dot lattice, blobs)."""
    theta, freq = rng.uniform(0, math.pi), rng.uniform(2.5, 5.0) / size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xs * math.cos(theta) + ys * math.sin(theta)) * 2 * math.pi * freq + rng.uniform(0, 2 * math.pi)
    v = (-xs * math.sin(theta) + ys * math.cos(theta)) * 2 * math.pi * freq + rng.uniform(0, 2 * math.pi)
    if label == 0:
        mask = np.sin(u) > 0
    elif label == 1:
        mask = np.sin(u) * np.sin(v) > 0
    elif label == 2:
        mask = np.cos(u) + np.cos(v) > 1.0
    else:  # blobs: thresholded smooth noise
        coarse = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), mode="F")
        mask = np.asarray(coarse.resize((size, size), Image.BICUBIC)) > 0
    background = _background_pixels(rng, size)
    color = np.asarray(_color(rng, background), dtype=np.float64)
    return _to_image(np.where(mask[..., None], color + rng.normal(0, 18, (size, size, 3)), background))


def draw_sample(task: str, label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``task`` with class ``label``."""
    if task == "synth_source":
        return draw_source(label, size, rng)
    if task == "synth_texture":
        return draw_texture(label, size, rng)
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
        raise ValueError(f"no generator for task {task!r}; generated tasks: {_known()}")
    return image


def _known() -> list[str]:
    return [*SUITES["synthetic"], *EXTRA_TASKS]


def num_classes(task: str) -> int:
    """Class count of a generated task (``ValueError`` listing the generated tasks otherwise)."""
    if task in EXTRA_TASKS:
        return EXTRA_TASKS[task]
    if task not in SUITES["synthetic"]:
        raise ValueError(f"no generator for task {task!r}; generated tasks: {_known()}")
    return TASKS[task].num_classes


def _samples(task: str, split: str, count: int, image_size: int, seed: int):
    rng = seeded_rng(VERSION, seed, task, split)
    for label in rng.permutation(np.arange(count) % num_classes(task)).tolist():
        yield draw_sample(task, label, image_size, rng), label


def generate(root: str | os.PathLike, tasks: list[str] | None = None, *, image_size: int = 64,
             sizes: dict[str, int] | None = None, seed: int = 0, fmt: str = "jpg") -> Path:
    """Write the generated ``tasks`` (default: the four of the ``synthetic`` suite) under ``root``; cached.

    ``sizes`` gives the image count of ``train800``, ``val200`` and ``test`` (``train800val200`` is
    their union); labels are balanced. ``fmt`` is the image format (``jpg`` quality 95, or ``png``).
    A task folder generated with other parameters is an error (``ValueError``), not overwritten.
    """
    root = Path(root)
    tasks = list(tasks or SUITES["synthetic"])
    sizes = dict(sizes or DEFAULT_SIZES)
    if set(sizes) != set(DEFAULT_SIZES) or min(sizes.values()) < 1:
        raise ValueError(f"sizes must give a positive count for each of {list(DEFAULT_SIZES)}, got {sizes}")
    for task in tasks:
        num_classes(task)  # an unknown task fails before anything is written
    for task in tasks:
        manifest = {"version": VERSION, "task": task, "image_size": image_size, "sizes": sizes, "seed": seed}
        if fmt != "jpg":
            manifest["format"] = fmt

        def write(folder: Path, task=task) -> None:
            lines = {split: write_split(folder, split, _samples(task, split, count, image_size, seed), fmt)
                     for split, count in sizes.items()}
            write_split_files(folder, lines)

        cached_task(root, task, manifest, write)
    return root


def default_cache_dir(image_size: int, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``$XDG_CACHE_HOME/liera-vision/vtab-synthetic/<parameters>`` (``~/.cache`` by default)."""
    sizes = dict(sizes or DEFAULT_SIZES)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liera-vision" / "vtab-synthetic"
    tag = f"v{VERSION}-{image_size}px-" + "-".join(str(sizes[s]) for s in DEFAULT_SIZES) + f"-seed{seed}"
    return base / tag
