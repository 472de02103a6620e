"""A small VTAB-style suite of REAL images that ship inside registry packages, and a letters source task.

Nothing is downloaded: the images come from scikit-learn (``sklearn.datasets.load_digits``, the
1,797 handwritten 8×8 digits of the UCI "Optical Recognition of Handwritten Digits" set) and from
scikit-image (``skimage.data``: photographs, textures and scientific images bundled in its wheel);
the letters of the pre-training source task are rendered in the typefaces matplotlib ships. Three
tasks, one per VTAB group (the ``real-mini`` suite of :mod:`.tasks`):

========== ============ ======= ===================================================================
task       group        classes what
========== ============ ======= ===================================================================
sk_digits  natural      10      which digit (load_digits, upscaled from 8×8)
sk_texture specialized  6       which surface or tissue a grey patch shows: brick, grass, gravel,
                                lunar surface (moon), stained tissue (immunohistochemistry), retina
                                fundus (retina); every patch is brightness/contrast normalised, so
                                only the texture tells them apart
sk_rotation structured  4       by how much a photo patch was rotated (0°, 90°, 180°, 270°
                                counter-clockwise): astronaut, camera, chelsea, coffee, coins,
                                horse (a silhouette), motorcycle, page, text; each gives all four
                                labels; nearly flat patches (sky, blank paper) are redrawn
========== ============ ======= ===================================================================

**Disjoint regions.** Patch tasks cut every source image into a grid of cells (texture: 128 px
cells of a 512 px canvas; rotation: 96 px cells of a canvas whose short side is 288 px) and give
each cell to ONE split (shuffled per image, about 50 % train800, 12.5 % val200, 37.5 % test, at
least one each); a patch lies inside one cell. So no test or val200 patch overlaps a training patch
(patches of one split may overlap each other). ``sk_digits`` draws each split from its own images.
Each task folder has ``provenance.csv``: per image its split, label, source image and box in the
source canvas (digits: the index in ``load_digits``).

**Layout and cache.** NOAH's (``train800.txt``, ``val200.txt``, ``train800val200.txt``,
``test.txt``, ``images/<split>/``), written by :func:`liera_vision.vtab.noah.cached_task`: a
``.complete`` manifest of the parameters, a temporary folder renamed into place. Deterministic:
the same parameters give byte-identical folders. The default split (``DEFAULT_SIZES``, sized for
2 CPU cores) is 80 train800 + 20 val200 (their union train800val200: 100) + 200 test images per task.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .noah import cached_task, seeded_rng, write_split, write_split_files

VERSION = 2  # 2: the letters source on plain light backgrounds in four faces
DEFAULT_SIZES = {"train800": 80, "val200": 20, "test": 200}
DEFAULT_IMAGE_SIZE = 32
CELL_FRACTIONS = {"train800": 0.5, "val200": 0.125, "test": 0.375}
TASK_NAMES = ("sk_digits", "sk_texture", "sk_rotation")
TEXTURE_SOURCES = ("brick", "grass", "gravel", "moon", "immunohistochemistry", "retina")
ROTATION_SOURCES = ("astronaut", "camera", "chelsea", "coffee", "coins", "horse", "motorcycle", "page", "text")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# four plain faces: with the 16 DejaVu / STIX faces and noisy colour backgrounds of version 1, 878 steps from random
# init learnt nothing that generalised (3.6 % test, chance 3.8 %); this source does (docs/vtab.md, "The backbone")
LETTER_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono")
SOURCE_TASK = "letters"
SOURCE_SIZES = {"train800": 13000, "val200": 1040, "test": 1040}  # 500 / 40 / 40 per letter; trains on train800val200
PROVENANCE = "provenance.csv"
MIN_PATCH_STD = 16.0  # grey-level standard deviation below which a patch counts as flat (8 tries)


class MissingPackageError(ImportError):
    """The suite needs scikit-learn / scikit-image (the ``vtab`` extra); the message says what to install."""


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingPackageError(f"the real-image suite reads its images from {package} ({module} is not "
                                  f"importable: {err}); install it: pip install {package}") from err


def package_versions() -> dict[str, str]:
    """Versions of the packages the images come from (recorded beside the data, not part of the cache key)."""
    import matplotlib
    import PIL

    return {"scikit-learn": _need("sklearn", "scikit-learn").__version__,
            "scikit-image": _need("skimage", "scikit-image").__version__,
            "matplotlib": matplotlib.__version__, "pillow": PIL.__version__, "numpy": np.__version__}


def _rng(*parts) -> np.random.Generator:
    return seeded_rng(VERSION, *parts)


def _check_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    sizes = dict(sizes or DEFAULT_SIZES)
    if set(sizes) != set(DEFAULT_SIZES) or not all(isinstance(v, int) and v >= 1 for v in sizes.values()):
        raise ValueError(f"sizes must give a positive integer count for each of {list(DEFAULT_SIZES)}, got {sizes}")
    return sizes


def _balanced(rng: np.random.Generator, count: int, classes: int) -> list[int]:
    return rng.permutation(np.arange(count) % classes).tolist()


# --- source images --------------------------------------------------------------------------------
def load_source(name: str) -> np.ndarray:
    """The named image bundled with scikit-image as ``uint8`` (H, W) or (H, W, 3)."""
    data = _need("skimage.data", "scikit-image")
    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]  # the left view
    elif name in (*TEXTURE_SOURCES, *ROTATION_SOURCES):
        image = getattr(data, name)()
    else:
        known = sorted({*TEXTURE_SOURCES, *ROTATION_SOURCES})
        raise ValueError(f"unknown source image {name!r}; expected one of {known}")
    image = np.asarray(image)
    if image.dtype == bool:  # the horse silhouette
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name}: expected uint8 pixels, got {image.dtype}")
    return image


def _canvas(name: str, task: str) -> Image.Image:
    """The working image a patch task cuts its cells from (grey 512×512 for texture; RGB, short side 288, rotation)."""
    image = Image.fromarray(load_source(name))
    if task == "sk_texture":
        image = image.convert("L")
        if name == "retina":  # the square inside the fundus circle, without the black surround
            w, h = image.size
            side = round(0.62 * min(w, h))
            image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
        return image.resize((512, 512), Image.BICUBIC) if image.size != (512, 512) else image
    image = image.convert("RGB")
    scale = 288 / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


@dataclass(frozen=True)
class PatchTask:
    sources: tuple[str, ...]
    cell: int           # side of the grid cells in canvas pixels
    patch: tuple[int, int]  # smallest and largest patch side in canvas pixels (inside one cell)


PATCH_TASKS = {"sk_texture": PatchTask(TEXTURE_SOURCES, 128, (64, 64)),
               "sk_rotation": PatchTask(ROTATION_SOURCES, 96, (64, 96))}


def split_cells(width: int, height: int, cell: int, rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """The grid cells (left, top) of a ``width``×``height`` canvas, each given to one split (see module doc)."""
    cells = [(x * cell, y * cell) for y in range(height // cell) for x in range(width // cell)]
    if len(cells) < 3:
        raise ValueError(f"a {width}x{height} canvas holds {len(cells)} cells of {cell} px; need 3 (one per split)")
    order = [cells[i] for i in rng.permutation(len(cells))]
    n_val = max(1, round(CELL_FRACTIONS["val200"] * len(cells)))
    n_test = max(1, round(CELL_FRACTIONS["test"] * len(cells)))
    n_train = len(cells) - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{len(cells)} cells leave none for train800")
    return {"train800": order[:n_train], "val200": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _normalise(patch: Image.Image) -> Image.Image:
    """Grey patch with mean 128 and standard deviation 48: brightness and contrast carry no label."""
    pixels = np.asarray(patch, dtype=np.float64)
    pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-6) * 48 + 128
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _patch_samples(task: str, sizes: dict[str, int], image_size: int, seed: int):
    """``split -> [(image, label, provenance row)]`` of a patch task."""
    spec = PATCH_TASKS[task]
    canvases = {name: _canvas(name, task) for name in spec.sources}
    cells = {name: split_cells(*canvas.size, spec.cell, _rng(seed, task, name, "cells"))
             for name, canvas in canvases.items()}
    out = {}
    for split, count in sizes.items():
        rng = _rng(seed, task, split)
        if task == "sk_texture":
            labels = _balanced(rng, count, len(spec.sources))
            sources = [spec.sources[label] for label in labels]
        else:
            labels = _balanced(rng, count, 4)
            sources = [spec.sources[i] for i in _balanced(rng, count, len(spec.sources))]
        samples = []
        for label, name in zip(labels, sources):
            for _ in range(8):  # flat patches (sky, blank paper) carry no orientation: keep the first with content
                left, top = cells[name][split][int(rng.integers(len(cells[name][split])))]
                side = int(rng.integers(spec.patch[0], spec.patch[1] + 1))
                x = left + int(rng.integers(spec.cell - side + 1))
                y = top + int(rng.integers(spec.cell - side + 1))
                box = (x, y, x + side, y + side)
                patch = canvases[name].crop(box)
                if np.asarray(patch.convert("L"), dtype=np.float64).std() >= MIN_PATCH_STD:
                    break
            if task == "sk_texture":
                patch, rotation = _normalise(patch), 0
            else:
                rotation = 90 * label
                if label:
                    patch = patch.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                             Image.Transpose.ROTATE_270)[label - 1])
            patch = patch.resize((image_size, image_size), Image.BICUBIC)
            samples.append((patch, label, {"source": name, "box": box, "rotation": rotation}))
        out[split] = samples
    return out


def _digit_samples(sizes: dict[str, int], image_size: int, seed: int):
    digits = _need("sklearn.datasets", "scikit-learn").load_digits()
    images, targets = np.asarray(digits.images), np.asarray(digits.target)
    pools = {c: list(_rng(seed, "sk_digits", "pool", c).permutation(np.flatnonzero(targets == c)))
             for c in range(10)}
    out = {}
    for split, count in sizes.items():  # every split takes its images from what the splits before it left
        samples = []
        for label in _balanced(_rng(seed, "sk_digits", split), count, 10):
            if not pools[label]:
                raise ValueError(f"load_digits has only {np.sum(targets == label)} images of digit {label}; "
                                 f"sizes {sizes} need more: use smaller sizes")
            index = int(pools[label].pop())
            pixels = np.rint(images[index] * (255 / 16)).astype(np.uint8)  # 0..16 grey levels
            image = Image.fromarray(pixels).resize((image_size, image_size), Image.BICUBIC)
            samples.append((image, label, {"source": "load_digits", "index": index}))
        out[split] = samples
    return out


def _write_provenance(folder: Path, samples: dict[str, list], lines: dict[str, list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["split", "image", "label", "source", "index", "left", "top", "right", "bottom", "rotation"])
    for split, rows in samples.items():
        for line, (_, label, where) in zip(lines[split], rows):
            box = where.get("box", ("", "", "", ""))
            writer.writerow([split, line.rsplit(maxsplit=1)[0], label, where["source"], where.get("index", ""),
                             *box, where.get("rotation", "")])
    (folder / PROVENANCE).write_text(text.getvalue())


def read_provenance(task_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``<task_dir>/provenance.csv`` with numbers as ``int`` (absent fields ``None``)."""
    path = Path(task_dir) / PROVENANCE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (written by liera_vision.vtab.realdata.generate)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("label", "index", "left", "top", "right", "bottom", "rotation"):
            row[key] = int(row[key]) if row[key] != "" else None
    return rows


def generate(root: str | os.PathLike, tasks: list[str] | tuple[str, ...] | None = None, *,
             image_size: int = DEFAULT_IMAGE_SIZE, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write the ``real-mini`` tasks (default: all three) under ``root`` in NOAH layout; cached, deterministic.

    Args:
        root: the suite folder (one sub-folder per task).
        tasks: names from ``TASK_NAMES``.
        image_size: side of the square images written, in pixels (the data module resizes anyway).
        sizes: images per split, ``{"train800": n, "val200": n, "test": n}``; labels are balanced.
        seed: selects images, cells and patches.

    Raises ``ValueError`` for an unknown task, bad sizes, more digits than ``load_digits`` holds, or a
    task folder made with other parameters; :class:`MissingPackageError` without scikit-learn /
    scikit-image.
    """
    root = Path(root)
    tasks = list(tasks or TASK_NAMES)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown real-mini task(s) {unknown}; expected names from {list(TASK_NAMES)}")
    sizes = _check_sizes(sizes)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    versions = package_versions()
    for task in tasks:
        manifest = {"suite": "real-mini", "version": VERSION, "task": task, "image_size": image_size, "sizes": sizes,
                    "seed": seed}

        def write(folder: Path, task=task) -> None:
            samples = (_digit_samples(sizes, image_size, seed) if task == "sk_digits"
                       else _patch_samples(task, sizes, image_size, seed))
            lines = {split: write_split(folder, split, ((image, label) for image, label, _ in rows))
                     for split, rows in samples.items()}
            write_split_files(folder, lines)
            _write_provenance(folder, samples, lines)
            (folder / "SOURCES.txt").write_text(f"{task}: real-mini suite v{VERSION} "
                                                f"(liera_vision.vtab.realdata), images from {versions}\n")

        cached_task(root, task, manifest, write)
    return root


# --- the pre-training source task: letters ----------------------------------------------------------
def font_files() -> list[Path]:
    """The TrueType files of ``LETTER_FONTS`` in matplotlib's data folder (``FileNotFoundError`` if any is missing)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    files = [folder / f"{name}.ttf" for name in LETTER_FONTS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"fonts missing from matplotlib's data folder: {missing}")
    return files


def draw_letter(label: int, size: int, rng: np.random.Generator, fonts: list[ImageFont.FreeTypeFont]) -> Image.Image:
    """One letter (class ``label`` = A…Z, upper or lower case) in a random typeface, size, place, angle and ink
    colour, dark on a light grey background with a little noise (both polarities at random learnt a third as
    fast: 11.6 % instead of 29.6 % held-out top-1 after the default pre-training, docs/vtab.md)."""
    big = 2 * size  # drawn at twice the size, then reduced: anti-aliased edges
    char = LETTERS[label] if rng.random() < 0.5 else LETTERS[label].lower()
    font = fonts[int(rng.integers(len(fonts)))].font_variant(size=max(6, round(big * rng.uniform(0.55, 0.85))))
    mask = Image.new("L", (big, big))
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font, anchor="mm")
    w, h = right - left, bottom - top
    cx = rng.uniform(big / 2 - max(0.0, (big - w) / 2 - 1), big / 2 + max(0.0, (big - w) / 2 - 1))
    cy = rng.uniform(big / 2 - max(0.0, (big - h) / 2 - 1), big / 2 + max(0.0, (big - h) / 2 - 1))
    draw.text((cx, cy), char, font=font, fill=255, anchor="mm")
    mask = mask.rotate(float(rng.uniform(-20, 20)), resample=Image.BICUBIC, center=(cx, cy))
    background = np.full((big, big, 3), rng.uniform(170, 255)) + rng.normal(0, 6, (big, big, 3))
    base = background.reshape(-1, 3).mean(0)
    ink = np.where(base > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3))
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255
    pixels = np.clip(background * (1 - alpha) + ink * alpha, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.BICUBIC)


def generate_letters(root: str | os.PathLike, *, image_size: int = DEFAULT_IMAGE_SIZE,
                     sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """The source task ``letters`` (26 classes, none shared with a target task) under ``root``; cached.

    Every letter in one of the four DejaVu typefaces of ``LETTER_FONTS`` (shipped with matplotlib), upper
    or lower case, scaled, moved and rotated (±20°), dark ink on a light background. Returns the task folder.
    """
    sizes = _check_sizes(sizes or SOURCE_SIZES)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    manifest = {"suite": "source", "version": VERSION, "task": SOURCE_TASK, "image_size": image_size,
                "sizes": sizes, "seed": seed, "fonts": list(LETTER_FONTS)}

    def write(folder: Path) -> None:
        fonts = [ImageFont.truetype(str(f), 32) for f in font_files()]
        lines = {}
        for split, count in sizes.items():
            rng = _rng(seed, SOURCE_TASK, split)
            labels = _balanced(rng, count, len(LETTERS))
            lines[split] = write_split(folder, split, ((draw_letter(label, image_size, rng, fonts), label)
                                                       for label in labels))
        write_split_files(folder, lines)

    return cached_task(root, SOURCE_TASK, manifest, write)


def default_cache_dir(image_size: int = DEFAULT_IMAGE_SIZE, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``$XDG_CACHE_HOME/liera-vision/real-mini/<parameters>`` (``~/.cache`` by default)."""
    sizes = _check_sizes(sizes)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liera-vision" / "real-mini"
    return base / (f"v{VERSION}-{image_size}px-" + "-".join(str(sizes[s]) for s in DEFAULT_SIZES) + f"-seed{seed}")
