"""The generated demo tasks: exact NOAH layout, balanced labels, deterministic, cached."""

from __future__ import annotations

import hashlib

import pytest

from liera_vision.vtab import SPLITS, synthetic
from liera_vision.vtab.data import read_split

SIZES = {"train800": 8, "val200": 4, "test": 4}


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_noah_layout_and_balanced_labels(tmp_path):
    root = synthetic.generate(tmp_path, image_size=24, sizes=SIZES)
    assert sorted(p.name for p in root.iterdir()) == sorted(synthetic.SUITES["synthetic"])
    for task in synthetic.SUITES["synthetic"]:
        for split in SPLITS:
            samples = read_split(root / task, split, 4)  # every line parses, every image exists
            assert all(path.parent == root / task / "images" / split for path, _ in samples)
        labels = [label for _, label in read_split(root / task, "train800", 4)]
        assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]
        union = read_split(root / task, "train800val200", 4)
        assert len(union) == SIZES["train800"] + SIZES["val200"]


def test_deterministic_and_cached(tmp_path):
    a = synthetic.generate(tmp_path / "a", ["synth_count"], image_size=24, sizes=SIZES, seed=1)
    b = synthetic.generate(tmp_path / "b", ["synth_count"], image_size=24, sizes=SIZES, seed=1)
    assert digest(a) == digest(b)
    c = synthetic.generate(tmp_path / "c", ["synth_count"], image_size=24, sizes=SIZES, seed=2)
    assert digest(c) != digest(a)
    stamp = (a / "synth_count" / "test.txt").stat().st_mtime_ns
    synthetic.generate(tmp_path / "a", ["synth_count"], image_size=24, sizes=SIZES, seed=1)  # cached: no rewrite
    assert (a / "synth_count" / "test.txt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"synth_count was generated with other parameters"):
        synthetic.generate(tmp_path / "a", ["synth_count"], image_size=32, sizes=SIZES, seed=1)
    assert not list((tmp_path / "a").glob(".*tmp*"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"no generator for task 'dtd'"):
        synthetic.generate(tmp_path, ["dtd"])
    with pytest.raises(ValueError, match=r"sizes must give a positive count for each of"):
        synthetic.generate(tmp_path, sizes={"train800": 4})
    (tmp_path / "synth_shape").mkdir()
    with pytest.raises(ValueError, match=r"synth_shape exists but is not a finished task folder \(no .complete\)"):
        synthetic.generate(tmp_path, ["synth_shape"], sizes=SIZES)


def test_default_cache_dir_names_the_parameters(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = synthetic.default_cache_dir(64)
    assert path == tmp_path / "liera-vision" / "vtab-synthetic" / f"v{synthetic.VERSION}-64px-160-40-200-seed0"
