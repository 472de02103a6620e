"""The real-image suite (scikit-learn / scikit-image) and the letters source task: NOAH layout, balanced labels,
disjoint image regions per split, deterministic, cached."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from liera_vision.vtab import SPLITS, TASKS, realdata
from liera_vision.vtab.data import read_split
from liera_vision.vtab.noah import MANIFEST

SIZES = {"train800": 12, "val200": 6, "test": 12}


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return realdata.generate(tmp_path_factory.mktemp("real"), image_size=16, sizes=SIZES)


def test_registered_suite_one_task_per_group():
    assert [(t, TASKS[t].group, TASKS[t].num_classes) for t in realdata.TASK_NAMES] == [
        ("sk_digits", "natural", 10), ("sk_texture", "specialized", 6), ("sk_rotation", "structured", 4)]
    assert len(realdata.TEXTURE_SOURCES) == TASKS["sk_texture"].num_classes


def test_noah_layout_balanced_labels_and_union(suite):
    for task in realdata.TASK_NAMES:
        classes = TASKS[task].num_classes
        folder = suite / task
        assert (folder / MANIFEST).is_file()
        for split in SPLITS:
            samples = read_split(folder, split, classes)  # every line parses, every image exists
            assert all(path.parent == folder / "images" / split for path, _ in samples)
            with Image.open(samples[0][0]) as image:
                assert image.size == (16, 16)
        for split, count in SIZES.items():
            labels = Counter(label for _, label in read_split(folder, split, classes))
            assert sum(labels.values()) == count and max(labels.values()) - min(labels.values()) <= 1
            assert len(labels) == min(classes, count)
        train, val = read_split(folder, "train800", classes), read_split(folder, "val200", classes)
        union = read_split(folder, "train800val200", classes)
        assert [label for _, label in union] == [label for _, label in train + val]
        assert [p.read_bytes() for p, _ in union] == [p.read_bytes() for p, _ in train + val]


def test_provenance_matches_the_split_files(suite):
    for task in realdata.TASK_NAMES:
        rows = realdata.read_provenance(suite / task)
        listed = {(split, line.rsplit(maxsplit=1)[0], int(line.rsplit(maxsplit=1)[1]))
                  for split in SIZES for line in (suite / task / f"{split}.txt").read_text().splitlines()}
        assert {(r["split"], r["image"], r["label"]) for r in rows} == listed
    rotation = realdata.read_provenance(suite / "sk_rotation")
    assert all(r["rotation"] == 90 * r["label"] for r in rotation)


def _overlap(a, b) -> bool:
    return a["source"] == b["source"] and a["left"] < b["right"] and b["left"] < a["right"] \
        and a["top"] < b["bottom"] and b["top"] < a["bottom"]


@pytest.mark.parametrize("task", ["sk_texture", "sk_rotation"])
def test_no_evaluation_patch_overlaps_a_training_patch(tmp_path, task):
    sizes = {"train800": 120, "val200": 60, "test": 120}  # enough patches to cover the cells densely
    rows = realdata.read_provenance(realdata.generate(tmp_path, [task], image_size=8, sizes=sizes) / task)
    train = [r for r in rows if r["split"] == "train800"]
    for split in ("val200", "test"):
        held_out = [r for r in rows if r["split"] == split]
        assert not [(a, b) for a in held_out for b in train if _overlap(a, b)]
    assert {r["source"] for r in rows} == set(realdata.PATCH_TASKS[task].sources)
    # the same box drawn twice inside one split does occur (patches of a split may overlap): the test can fail
    assert any(_overlap(a, b) for a in train for b in train if a is not b)


def test_digits_take_distinct_images_per_split(suite):
    rows = realdata.read_provenance(suite / "sk_digits")
    indices = {split: {r["index"] for r in rows if r["split"] == split} for split in SIZES}
    assert sum(len(v) for v in indices.values()) == sum(SIZES.values())  # no image twice, within or across splits
    from sklearn.datasets import load_digits

    digits = load_digits()
    for row in rows[:5]:
        assert digits.target[row["index"]] == row["label"]


def test_split_cells_are_a_partition():
    cells = realdata.split_cells(512, 512, 128, np.random.default_rng(0))
    assert [len(cells[s]) for s in ("train800", "val200", "test")] == [8, 2, 6]
    every = [c for s in cells.values() for c in s]
    assert sorted(every) == sorted((x, y) for x in range(0, 512, 128) for y in range(0, 512, 128))
    assert [len(v) for v in realdata.split_cells(300, 100, 96, np.random.default_rng(0)).values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="holds 2 cells of 96 px; need 3"):
        realdata.split_cells(200, 100, 96, np.random.default_rng(0))


def test_deterministic_and_cached(tmp_path, suite):
    again = realdata.generate(tmp_path / "a", ["sk_texture"], image_size=16, sizes=SIZES)
    assert digest(again / "sk_texture") == digest(suite / "sk_texture")
    other = realdata.generate(tmp_path / "b", ["sk_texture"], image_size=16, sizes=SIZES, seed=1)
    assert digest(other / "sk_texture") != digest(suite / "sk_texture")
    stamp = (again / "sk_texture" / "test.txt").stat().st_mtime_ns
    realdata.generate(tmp_path / "a", ["sk_texture"], image_size=16, sizes=SIZES)  # cached: nothing rewritten
    assert (again / "sk_texture" / "test.txt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"sk_texture was generated with other parameters"):
        realdata.generate(tmp_path / "a", ["sk_texture"], image_size=24, sizes=SIZES)
    assert not list((tmp_path / "a").glob(".*tmp*"))


def test_texture_patches_carry_no_brightness_cue(suite):
    for path, _ in read_split(suite / "sk_texture", "test", 6)[:12]:
        pixels = np.asarray(Image.open(path), dtype=np.float64)
        assert abs(pixels.mean() - 128) < 10 and pixels.std() > 5  # normalised (mean 128, std 48) before the resize


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown real-mini task\(s\) \['dtd'\]"):
        realdata.generate(tmp_path, ["dtd"])
    with pytest.raises(ValueError, match=r"sizes must give a positive integer count for each of"):
        realdata.generate(tmp_path, sizes={"train800": 4})
    with pytest.raises(ValueError, match=r"image_size must be an integer >= 8, got 4"):
        realdata.generate(tmp_path, image_size=4)
    with pytest.raises(ValueError, match=r"load_digits has only 1\d\d images of digit \d; sizes .* need more"):
        realdata.generate(tmp_path, ["sk_digits"], sizes={"train800": 1000, "val200": 500, "test": 500})
    assert not (tmp_path / "sk_digits").exists() and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "sk_rotation").mkdir()
    with pytest.raises(ValueError, match=r"sk_rotation exists but is not a finished task folder"):
        realdata.generate(tmp_path, ["sk_rotation"], sizes=SIZES)


def test_letters_source_task(tmp_path):
    sizes = {"train800": 52, "val200": 26, "test": 26}
    folder = realdata.generate_letters(tmp_path, image_size=16, sizes=sizes)
    assert folder == tmp_path / realdata.SOURCE_TASK
    labels = Counter(label for _, label in read_split(folder, "train800", 26))
    assert labels == Counter({c: 2 for c in range(26)})  # every letter, twice
    images = [np.asarray(Image.open(p)) for p, _ in read_split(folder, "test", 26)]
    assert all(image.shape == (16, 16, 3) and image.std() > 10 for image in images)
    again = realdata.generate_letters(tmp_path / "again", image_size=16, sizes=sizes)
    assert digest(again) == digest(folder)
    assert len(realdata.font_files()) == len(realdata.LETTER_FONTS) == 4
