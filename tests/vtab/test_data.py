"""VTABDataModule on NOAH-format folders, and every bad-data case raising its documented error."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from liera_vision.vtab import VTABDataError, VTABDataModule
from liera_vision.vtab.data import load_image, read_split, to_rgb

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
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, num_devices=2,
                                       strategy=SimpleNamespace(root_device=torch.device("cpu")))
        data.setup("test")
        shards.append(list(data.test_dataloader().sampler))
    assert sorted(shards[0] + shards[1]) == list(range(TINY_SIZES["test"]))  # 7 images: no padded repeat


def test_training_order_depends_on_the_seed_and_the_epoch_only(tiny_vtab):
    """What lets a resumed run see the batches of the uninterrupted one: no global random state is involved."""
    def orders(seed, world=1, rank=0):
        torch.manual_seed(seed)  # what seed_everything does before the data module is set up
        data = module(tiny_vtab)
        data.trainer = SimpleNamespace(world_size=world, global_rank=rank, num_devices=world,
                                       strategy=SimpleNamespace(root_device=torch.device("cpu")))
        data.setup("fit")
        sampler = data.train_dataloader().sampler
        torch.rand(100)  # the global stream moves on (model init, augmentation): the order does not care
        out = []
        for epoch in range(3):
            sampler.set_epoch(epoch)  # Lightning calls it at the start of every epoch
            out.append(list(sampler))
        return out

    n = TINY_SIZES["train800"] + TINY_SIZES["val200"]
    first = orders(0)
    assert first == orders(0) and all(sorted(o) == list(range(n)) for o in first)
    assert first[0] != first[1] != first[2] and orders(1) != first
    halves = [orders(0, world=2, rank=r) for r in (0, 1)]
    assert all(sorted(halves[0][e] + halves[1][e]) == list(range(n)) for e in range(3))  # 12 = 2 x 6: no repeat


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


def test_an_error_in_a_loader_worker_reads_as_one_line(task_copy):
    """torch re-raises a worker's error with the worker's traceback in the message; the CLI prints its last line."""
    from liera_vision.vtab.cli import one_line

    (task_copy / "images" / "test" / "000002.jpg").write_bytes(b"not a jpeg")
    data = module(task_copy.parent, num_workers=1)
    data.setup("test")
    with pytest.raises(VTABDataError, match="Original Traceback") as caught:
        list(data.test_dataloader())
    assert re.fullmatch(r".*images/test/000002.jpg: cannot read image \(UnidentifiedImageError: .*\)",
                        one_line(caught.value))
    assert not one_line(caught.value).startswith("liera_vision")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown task 'imagenet'.*pass num_classes explicitly"):
        VTABDataModule(task="imagenet")
    with pytest.raises(ValueError, match=r"num_classes=10 contradicts the registry: 'dtd' has 47 classes"):
        VTABDataModule(task="dtd", num_classes=10)
    with pytest.raises(ValueError, match="protocol must be one of"):
        VTABDataModule(task="dtd", protocol="train")


# --- image modes: every pixel mapped by its meaning, or the file refused -----------------------------------
def rgb(image) -> np.ndarray:
    return np.asarray(to_rgb(image), dtype=np.int64)


def test_16bit_grey_png_of_a_custom_task_arrives_scaled(tmp_path):
    """The issue's case: a custom NOAH task whose PNG is a smooth 16-bit ramp over 0..65535."""
    ramp = np.round(np.linspace(0, 65535, 32 * 32)).astype(np.uint16).reshape(32, 32)
    task = tmp_path / "my_task"
    (task / "images").mkdir(parents=True)
    Image.fromarray(ramp).save(task / "images" / "ramp.png")
    assert Image.open(task / "images" / "ramp.png").mode == "I;16"
    for split in ("train800val200", "test"):
        (task / f"{split}.txt").write_text("images/ramp.png 1\n")
    data = VTABDataModule(root=str(tmp_path), task="my_task", num_classes=2, image_size=32, num_workers=0)
    data.setup("fit")
    x, label = data.eval_set[0]
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    pixels = torch.round((x * std + mean) * 255).to(torch.int64)  # undo ToTensor + Normalize
    expected = torch.from_numpy((ramp.astype(np.int64) * 255 + 32767) // 65535)  # round(v / 257)
    assert label == 1 and all(torch.equal(pixels[c], expected) for c in range(3))
    assert len(torch.unique(pixels)) == 256 and float((pixels == 255).float().mean()) < 0.01  # not 2 levels


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_modes(mode):
    values = np.array([[0, 128, 129, 257], [32767, 32768, 65278, 65535]], dtype=np.uint16)
    image = Image.frombytes(mode, (4, 2), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    out = rgb(image)
    assert out[..., 0].tolist() == [[0, 0, 1, 1], [127, 128, 254, 255]] and (out[..., 0] == out[..., 2]).all()


def test_32bit_integer_and_float_modes(tmp_path):
    ints = np.array([[0, 257, 65535]], dtype=np.int32)
    assert rgb(Image.fromarray(ints, mode="I"))[0, :, 1].tolist() == [0, 1, 255]  # 16-bit data in a 32-bit image
    floats = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    assert rgb(Image.fromarray(floats, mode="F"))[0, :, 0].tolist() == [0, 128, 255, 64]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(VTABDataError, match=r"wide.tif: 32-bit integer image \(PIL mode I\) with values 0..70000; "
                                            r"expected 0..65535"):
        load_image(tmp_path / "wide.tif")
    Image.fromarray(np.array([[-1.0, 2.0]], dtype=np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(VTABDataError, match=r"hdr.tif: 32-bit float image \(PIL mode F\) with values -1..2; "
                                            r"expected values in \[0, 1\]"):
        load_image(tmp_path / "hdr.tif")


def test_alpha_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 255), (10, 20, 30, 0), (0, 0, 0, 51)])  # opaque, transparent, 20 % black
    assert rgb(rgba)[0].tolist() == [[10, 20, 30], [255, 255, 255], [204, 204, 204]]  # 255 * (1 - 0.2) = 204
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 255), (50, 0)])
    assert rgb(la)[0].tolist() == [[50, 50, 50], [255, 255, 255]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 is transparent
    assert rgb(Image.open(tmp_path / "palette.png"))[0].tolist() == [[255, 255, 255], [200, 100, 0]]
    plain = Image.new("RGB", (2, 1))
    plain.putdata([(1, 2, 3), (9, 9, 9)])
    plain.save(tmp_path / "trns.png", transparency=(1, 2, 3))  # PNG tRNS: one colour is transparent
    assert np.asarray(load_image(tmp_path / "trns.png")).tolist() == [[[255, 255, 255], [9, 9, 9]]]


def test_cmyk_bilevel_and_unsupported_modes():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])
    assert rgb(cmyk)[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 1])
    assert rgb(bilevel)[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    with pytest.raises(VTABDataError, match=r"PIL image mode LAB cannot be mapped to RGB without a colour model"):
        to_rgb(Image.new("LAB", (2, 2)), "lab.tif")


def test_several_frames_are_refused_and_exif_orientation_is_applied(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(VTABDataError, match=r"anim.gif: holds 2 frames \(GIF: an animation or a multi-page file\); "
                                            r"expected a single image"):
        load_image(tmp_path / "anim.gif")
    sideways = Image.new("L", (2, 1))
    sideways.putdata([0, 255])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # the camera was turned: rotate 90° clockwise to view
    sideways.save(tmp_path / "photo.png", exif=exif)
    upright = load_image(tmp_path / "photo.png")
    assert upright.size == (1, 2) and [upright.getpixel((0, y))[0] for y in range(2)] == [0, 255]


def test_task_alias_with_explicit_class_count_resolves_everywhere(tiny_vtab, tmp_path, monkeypatch):
    """``--data.task cifar100 --data.num_classes 100``: folder, data module and result agree on ``cifar``."""
    from liera_vision.vtab.cli import VTABCLI

    shutil.copytree(tiny_vtab / "synth_position", tmp_path / "data" / "cifar100")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = VTABCLI(args=["--data.root", "data", "--data.task", "cifar100", "--data.num_classes", "100",
                            "--model.arch", "atto"], run=False)
    assert cli.datamodule.task == "cifar" and cli.datamodule.task_dir == Path("data") / "cifar100"
    assert cli.trainer.default_root_dir == str(Path("runs/vtab/liera-taylor-r8/cifar"))
