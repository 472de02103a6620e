"""Writing task folders in the NOAH / VTAB-1k layout, cached by parameters and swapped in atomically.

One implementation for every generated or converted task (the synthetic demo tasks of
:mod:`.synthetic`, the real-image suite and the letters source task of :mod:`.realdata`, the
transfer study's tasks)::

    <root>/<task>/train800.txt val200.txt train800val200.txt test.txt   lines "images/<split>/000123.png 7"
    <root>/<task>/images/<split>/*.png|jpg                               train800val200 holds its own copies
    <root>/<task>/.complete                                              the parameters it was written with

A task is written into ``<root>/.<task>.tmp-<pid>`` and renamed into place only when complete, so an
interrupted run never leaves half a task; a finished folder whose ``.complete`` names other
parameters is an error (``ValueError`` naming the folder and both parameter sets), never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST = ".complete"
SPLITS = ("train800", "val200", "test")  # written; train800val200 is their union (train800, then val200)
FORMATS = {"png": {}, "jpg": {"quality": 95}}


def seeded_rng(*parts) -> np.random.Generator:
    """A NumPy generator seeded by ``repr(parts)`` (sha256): the same parts give the same stream on every machine."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little"))


def write_split(folder: Path, split: str, samples: Iterable[tuple[Image.Image, int]], fmt: str = "png") -> list[str]:
    """Save ``(image, label)`` pairs as ``images/<split>/000000.<fmt>`` …; returns the split file's lines."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {list(FORMATS)}, got {fmt!r}")
    (folder / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(samples):
        rel = f"images/{split}/{i:06d}.{fmt}"
        image.save(folder / rel, **FORMATS[fmt])
        lines.append(f"{rel} {int(label)}")
    return lines


def write_split_files(folder: Path, lines: dict[str, list[str]]) -> None:
    """The four split files; ``train800val200`` (copies of the train800 and val200 images) is made here."""
    missing = [s for s in SPLITS if s not in lines]
    if missing:
        raise ValueError(f"split lines for {missing} missing (expected {list(SPLITS)})")
    union_dir = folder / "images" / "train800val200"
    union_dir.mkdir(parents=True, exist_ok=True)
    union = []
    for split in ("train800", "val200"):  # NOAH's folders keep their own copies under images/train800val200
        for line in lines[split]:
            rel, label = line.rsplit(maxsplit=1)
            name = f"{split}_{Path(rel).name}"
            shutil.copyfile(folder / rel, union_dir / name)
            union.append(f"images/train800val200/{name} {label}")
    for split, rows in {**lines, "train800val200": union}.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")


def cached_task(root: str | os.PathLike, task: str, manifest: dict, write: Callable[[Path], None]) -> Path:
    """``<root>/<task>``, written by ``write(tmp_folder)`` unless a finished folder with ``manifest`` is there.

    ``manifest`` (JSON-serialisable) is what makes two generations equal. ``write`` fills the
    temporary folder (split files and images); the manifest is added and the folder renamed into
    place. Two processes writing the same task at once are safe: the second finds the first's.
    """
    root = Path(root)
    folder = root / task
    text = json.dumps(manifest, sort_keys=True)
    if _finished(folder, text):
        return folder
    if folder.exists():
        raise ValueError(f"{folder} exists but is not a finished task folder (no {MANIFEST}); delete it")
    tmp = root / f".{task}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        (tmp / MANIFEST).write_text(text + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _finished(folder, text):  # not another process's identical result: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _finished(folder: Path, text: str) -> bool:
    done = folder / MANIFEST
    if not done.is_file():
        return False
    old = done.read_text().strip()
    try:
        same = json.loads(old) == json.loads(text)
    except json.JSONDecodeError:
        same = False
    if not same:
        raise ValueError(f"{folder} was generated with other parameters ({old}); wanted {text}; "
                         "use another root or delete it")
    return True
