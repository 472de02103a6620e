"""VTABDataModule on NOAH-format folders, and every bad-data case raising its documented error."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from liera_vision.vtab import VTABDataError, VTABDataModule
from liera_vision.vtab.data import read_split

from .conftest import TINY_SIZES


def module(root, task="synth_position", **kwargs) -> VTABDataModule:
    kwargs.setdefault("num_workers", 0)
    return VTABDataModule(root=str(root), task=task, image_size=32, batch_size=4, **kwargs)


def test_final_and_tune_protocols(tiny_vtab):
    final = module(tiny_vtab)
    final.setup("fit")
    assert (final.train_split, final.eval_split) == ("train800val200", "test")
    assert len(final.train_set) == TINY_SIZES["train800"] + TINY_SIZES["val200"]
    assert len(final.eval_set) == TINY_SIZES["test"]
    x, y = next(iter(final.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.1  # ImageNet-normalised, not [0, 255]
    tune = module(tiny_vtab, protocol="tune")
    tune.setup("fit")
    assert len(tune.train_set) == TINY_SIZES["train800"] and len(tune.eval_set) == TINY_SIZES["val200"]
    assert tune.num_classes == 4


def test_evaluation_is_deterministic_and_augmentation_is_opt_in(tiny_vtab):
    plain = module(tiny_vtab)
    plain.setup("fit")
    a, b = plain.train_set[0][0], plain.train_set[0][0]
    assert torch.equal(a, b)  # no augmentation by default
    flips = module(tiny_vtab, augment="hflip")
    flips.setup("fit")
    torch.manual_seed(0)
    seen = {tuple(flips.train_set[0][0][0, 0, :2].tolist()) for _ in range(12)}
    assert len(seen) == 2  # the image and its mirror


def test_distributed_evaluation_sees_every_image_once(tiny_vtab):
    shards = []
    for rank in range(2):
        data = module(tiny_vtab)
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, num_devices=2, accelerator=None)
        data.setup("test")
        shards.append(list(data.test_dataloader().sampler))
    assert sorted(shards[0] + shards[1]) == list(range(TINY_SIZES["test"]))  # 7 images: no padded repeat


def test_alias_folder_and_custom_task(tiny_vtab, tmp_path):
    shutil.copytree(tiny_vtab / "synth_position", tmp_path / "cifar100")  # NOAH-style data under an alias name
    data = VTABDataModule(root=str(tmp_path), task="cifar", num_workers=0)
    assert data.num_classes == 100 and data.task_dir == tmp_path / "cifar100"
    data.setup("fit")
    shutil.copytree(tiny_vtab / "synth_position", tmp_path / "my_task")
    custom = VTABDataModule(root=str(tmp_path), task="my_task", num_classes=4, num_workers=0)
    custom.setup("fit")
    assert custom.num_classes == 4 and len(custom.eval_set) == TINY_SIZES["test"]


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture
def task_copy(tiny_vtab, tmp_path) -> Path:
    shutil.copytree(tiny_vtab / "synth_position", tmp_path / "synth_position")
    return tmp_path / "synth_position"


def test_missing_root_and_task_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VTAB root .*nowhere does not exist"):
        module(tmp_path / "nowhere").setup("fit")
    (tmp_path / "dtd").mkdir()
    with pytest.raises(FileNotFoundError, match=r"task folder for 'synth_position' not found in .* "
                                                r"\(tried \['synth_position'\]\); folders present: \['dtd'\]"):
        module(tmp_path).setup("fit")


def test_missing_split_file(task_copy):
    (task_copy / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file .*synth_position/test.txt does not exist; "
                                                r"a NOAH-format task folder holds train800.txt"):
        module(task_copy.parent).setup("fit")


@pytest.mark.parametrize("line, message", [
    ("images/train800/000000.jpg", r"malformed line 'images/train800/000000.jpg'; expected '<image path> "
                                   r"<integer label>'"),
    ("images/train800/000000.jpg cat", "malformed line"),
    ("images/train800/000000.jpg 4", r"label 4 is out of range for 'synth_position' with 4 classes "
                                     r"\(expected 0..3\)"),
    ("images/train800/000000.jpg -1", "label -1 is out of range"),
])
def test_bad_lines_name_file_and_line(task_copy, line, message):
    lines = (task_copy / "train800val200.txt").read_text().splitlines()
    lines[2] = line
    (task_copy / "train800val200.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(VTABDataError, match=r"synth_position/train800val200.txt:3: " + message):
        module(task_copy.parent).setup("fit")


def test_missing_image_names_line_and_path(task_copy):
    (task_copy / "images" / "test" / "000004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.txt:5: image .*images/test/000004.jpg does not exist"):
        module(task_copy.parent).setup("test")


def test_empty_split_file(task_copy):
    (task_copy / "val200.txt").write_text("\n")
    with pytest.raises(VTABDataError, match=r"val200.txt: no samples"):
        read_split(task_copy, "val200", 4)


def test_unreadable_image_names_its_path(task_copy):
    (task_copy / "images" / "test" / "000002.jpg").write_bytes(b"not a jpeg")
    data = module(task_copy.parent)
    data.setup("test")  # listed and present: the damage shows when the image is decoded
    with pytest.raises(VTABDataError, match=r"images/test/000002.jpg: cannot read image \(UnidentifiedImageError"):
        list(data.test_dataloader())


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown task 'imagenet'.*pass num_classes explicitly"):
        VTABDataModule(task="imagenet")
    with pytest.raises(ValueError, match=r"num_classes=10 contradicts the registry: 'dtd' has 47 classes"):
        VTABDataModule(task="dtd", num_classes=10)
    with pytest.raises(ValueError, match="protocol must be one of"):
        VTABDataModule(task="dtd", protocol="train")
