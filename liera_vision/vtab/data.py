"""VTAB-1k data in the NOAH folder format, as a LightningDataModule.

Layout (the one NOAH's ``get_vtab1k.py`` writes)::

    <root>/<task>/train800.txt          lines "images/train800/000123.jpg 7"
    <root>/<task>/val200.txt
    <root>/<task>/train800val200.txt
    <root>/<task>/test.txt
    <root>/<task>/images/<split>/*.jpg

Protocols: ``final`` trains on train800val200 and evaluates on test; ``tune`` trains on train800
and evaluates on val200. The evaluation split serves both the periodic evaluations during
``fit`` (the papers report the best of them) and the final ``test``.

Bad data fails early and names the culprit: a missing task folder, split file or image
(``FileNotFoundError``), a malformed line or an out-of-range label (:class:`VTABDataError`,
``file:line``), an unreadable image or one whose pixels cannot be turned into 8-bit RGB without
guessing (:class:`VTABDataError`, its path; see :func:`to_rgb`).

Order: the training split is shuffled per epoch by a permutation seeded with the run's seed and
the epoch number (``DistributedSampler(seed, set_epoch)``), so a run resumed from a checkpoint
sees the same batches as one that never stopped; the evaluation split is read in order, split
over the ranks without padding (every image counts once).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms

from .tasks import find_task, get_task

SPLITS = ("train800", "val200", "train800val200", "test")
PROTOCOLS = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}


class VTABDataError(ValueError):
    """Malformed VTAB data: the message names the file (and line) or image at fault."""


def find_task_dir(root: str | os.PathLike, task: str) -> Path:
    """``<root>/<task>``, trying every name of the task (``cifar`` ↔ ``cifar100``, :meth:`Task.names`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VTAB root {root} does not exist (expected <root>/<task>/<split>.txt folders)")
    spec = find_task(task)
    candidates = [task] if spec is None else list(spec.names)
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise FileNotFoundError(f"task folder for {task!r} not found in {root} (tried {candidates}); "
                            f"folders present: {present[:25]}")


def read_split(task_dir: str | os.PathLike, split: str, num_classes: int) -> list[tuple[Path, int]]:
    """``(image path, label)`` pairs of ``<task_dir>/<split>.txt``, every line and image checked."""
    task_dir = Path(task_dir)
    file = task_dir / f"{split}.txt"
    if not file.is_file():
        raise FileNotFoundError(f"split file {file} does not exist; a NOAH-format task folder holds "
                                f"{', '.join(s + '.txt' for s in SPLITS)}")
    samples = []
    for lineno, raw in enumerate(file.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.strip().rsplit(maxsplit=1)  # image paths may contain spaces; the label is last
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise VTABDataError(f"{file}:{lineno}: malformed line {raw!r}; expected '<image path> <integer label>'")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise VTABDataError(f"{file}:{lineno}: label {label} is out of range for {task_dir.name!r} "
                                f"with {num_classes} classes (expected 0..{num_classes - 1})")
        path = task_dir / parts[0]
        if not path.is_file():
            raise FileNotFoundError(f"{file}:{lineno}: image {path} does not exist")
        samples.append((path, label))
    if not samples:
        raise VTABDataError(f"{file}: no samples (empty split file)")
    return samples


ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels show this colour, as in an image viewer
_PLAIN_MODES = ("RGB", "RGBX", "L", "P", "1", "CMYK", "YCbCr")  # convert("RGB") maps these exactly


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 → 0..255, rounded (65535 / 255 = 257 input steps per output step)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(image: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """``image`` as 8-bit RGB, every PIL mode mapped by its meaning (``convert("RGB")`` alone clips or drops some).

    * 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): 0..65535 scaled to 0..255;
    * 32-bit integer (``I``): values must lie in 0..65535 (16-bit data, e.g. a 16-bit PNG read by an older
      PIL) and are scaled the same way; other ranges cannot be mapped without guessing: ``VTABDataError``;
    * 32-bit float (``F``): values must lie in [0, 1] and are scaled to 0..255; others: ``VTABDataError``;
    * alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``) or a transparent colour (``P`` / ``L`` / ``RGB`` with
      PNG ``transparency``): composited over :data:`ALPHA_BACKGROUND` (white) instead of dropping the alpha,
      which would show whatever colour the file keeps under transparent pixels;
    * ``RGB``, ``L``, ``P``, ``1`` (0 → 0, 1 → 255), ``CMYK`` (PIL's naive conversion: no colour profile),
      ``YCbCr``: PIL's conversion; any other mode (``LAB``, ``HSV`` …): ``VTABDataError``.

    ``path`` only names the file in errors.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray(_scale_16bit(np.asarray(image))).convert("RGB")
    if mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise VTABDataError(f"{path}: 32-bit integer image (PIL mode I) with values {low}..{high}; expected "
                                "0..65535 (16-bit data). Convert it to 8 bits with the scaling you intend")
        return Image.fromarray(_scale_16bit(values)).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise VTABDataError(f"{path}: 32-bit float image (PIL mode F) with values {values.min():g}.."
                                f"{values.max():g}; expected values in [0, 1]. Convert it to 8 bits with the "
                                "scaling you intend")
        return Image.fromarray(np.round(values * 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode not in _PLAIN_MODES:
        raise VTABDataError(f"{path}: PIL image mode {mode} cannot be mapped to RGB without a colour model "
                            f"(supported: {', '.join(_PLAIN_MODES)}, 16/32-bit grey, float, alpha)")
    return image.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (:func:`to_rgb`), turned upright by its EXIF orientation.

    ``VTABDataError`` naming the file when it cannot be decoded or holds several frames (an animation or a
    multi-page file: which frame is the sample would be a guess; an MPO photo's first frame is its primary
    image and is used).
    """
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format != "MPO":
                raise VTABDataError(f"{path}: holds {frames} frames ({image.format}: an animation or a multi-page "
                                    "file); expected a single image")
            if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image, path)
    except VTABDataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise VTABDataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


class EvalShardSampler(DistributedSampler):
    """Rank ``r`` of ``n`` reads samples ``r, r + n, r + 2n, …``: every sample exactly once over the ranks.

    torch's ``DistributedSampler`` pads the shards to equal length with repeats, which would bias an
    accuracy; evaluation syncs no gradients, so uneven shards are safe. Being a ``DistributedSampler``,
    Lightning uses it as it is (``Trainer(use_distributed_sampler=True)`` replaces only other samplers).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class ImageList(Dataset):
    """Images and labels from :func:`read_split`, decoded with PIL and passed through ``transform``."""

    def __init__(self, samples: list[tuple[Path, int]], transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label


def build_transform(image_size: int, augment: str = "none", train: bool = False):
    """The protocol's transform: bicubic resize to a square, ImageNet mean / std; optional training augmentation."""
    bicubic = transforms.InterpolationMode.BICUBIC
    if train and augment == "timm":
        from timm.data import create_transform

        return create_transform(image_size, is_training=True, interpolation="bicubic",
                                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    steps = [transforms.Resize((image_size, image_size), interpolation=bicubic)]
    if train and augment == "hflip":
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return transforms.Compose(steps)


class VTABDataModule(L.LightningDataModule):
    """One VTAB-1k task in the NOAH folder format.

    Args:
        root: folder holding one sub-folder per task.
        task: task folder name; aliases (``cifar100``, ``oxford_pet``) resolve to the registry's names.
        protocol: ``final`` (train800val200 → test) or ``tune`` (train800 → val200).
        batch_size: training batch size (the protocol's 64); ``eval_batch_size`` defaults to it.
        num_workers: loader processes; ``None`` picks ``min(8, CPUs per device − 1)``.
        pin_memory: ``None`` pins when training on CUDA.
        image_size: side of the square input (the protocol's 224).
        augment: ``none`` (the protocol), ``hflip`` (random horizontal flip; wrong for orientation /
            location tasks) or ``timm`` (timm's ImageNet training pipeline: random resized crop, flip,
            colour jitter).
        num_classes: class count of a task that is not in the registry (must agree with it otherwise).
    """

    def __init__(self, root: str = "data/vtab-1k", task: str = "cifar", protocol: Literal["final", "tune"] = "final",
                 batch_size: int = 64, eval_batch_size: int | None = None, num_workers: int | None = None,
                 pin_memory: bool | None = None, image_size: int = 224,
                 augment: Literal["none", "hflip", "timm"] = "none", num_classes: int | None = None) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        if augment not in ("none", "hflip", "timm"):
            raise ValueError(f"augment must be 'none', 'hflip' or 'timm', got {augment!r}")
        spec = find_task(task)
        if num_classes is None:
            spec = get_task(task)  # ValueError listing the registered names
            num_classes = spec.num_classes
        elif spec is not None and spec.num_classes != num_classes:
            raise ValueError(f"num_classes={num_classes} contradicts the registry: {spec.name!r} has "
                             f"{spec.num_classes} classes")
        if spec is not None:
            task = spec.name
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        # num_classes is the model's hyper-parameter (LightningCLI links it there); logging it twice
        # with the CLI's unresolved None would clash
        self.save_hyperparameters(ignore=["num_classes"])
        self.root, self.task, self.num_classes = Path(root), task, num_classes
        self.protocol = protocol
        self.train_split, self.eval_split = PROTOCOLS[protocol]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.image_size, self.augment = image_size, augment
        self.train_set: ImageList | None = None
        self.eval_set: ImageList | None = None
        self.shuffle_seed: int | None = None

    @property
    def task_dir(self) -> Path:
        return find_task_dir(self.root, self.task)

    def setup(self, stage: str | None = None) -> None:
        task_dir = self.task_dir
        if self.shuffle_seed is None:  # the run's seed (seed_everything sets it) orders every epoch
            self.shuffle_seed = torch.initial_seed() % 2**63
        if stage in (None, "fit") and self.train_set is None:
            samples = read_split(task_dir, self.train_split, self.num_classes)
            self.train_set = ImageList(samples, build_transform(self.image_size, self.augment, train=True))
        if self.eval_set is None:
            samples = read_split(task_dir, self.eval_split, self.num_classes)
            self.eval_set = ImageList(samples, build_transform(self.image_size))

    # --- loaders -----------------------------------------------------------------------------
    def _loader_kwargs(self) -> dict:
        trainer = self.trainer
        devices = trainer.num_devices if trainer is not None else 1
        workers = self.num_workers
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(8, max(0, cpus // max(devices, 1) - 1))
        pin = self.pin_memory
        if pin is None:
            pin = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        # a DistributedSampler even on one device: its order depends on (seed, epoch) only, which Lightning
        # sets each epoch (set_epoch), so a resumed run repeats the uninterrupted run's batches; Lightning
        # keeps a DistributedSampler it finds instead of adding its own (Trainer(use_distributed_sampler))
        world, rank = self._ranks()
        seed = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed() % 2**63
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, **self._loader_kwargs())

    def _eval_loader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = EvalShardSampler(self.eval_set, num_replicas=world, rank=rank) if world > 1 else None
        return DataLoader(self.eval_set, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
