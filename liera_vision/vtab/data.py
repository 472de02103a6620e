"""VTAB-1k data in the NOAH folder format, as a LightningDataModule.

Layout (REFERENCE.md §2)::

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
``file:line``), an unreadable image (:class:`VTABDataError`, its path).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from .tasks import TASKS, get_task

SPLITS = ("train800", "val200", "train800val200", "test")
PROTOCOLS = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}


class VTABDataError(ValueError):
    """Malformed VTAB data: the message names the file (and line) or image at fault."""


def find_task_dir(root: str | os.PathLike, task: str) -> Path:
    """``<root>/<task>``, trying the registered aliases of ``task`` (``cifar`` ↔ ``cifar100``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VTAB root {root} does not exist (expected <root>/<task>/<split>.txt folders)")
    spec = TASKS.get(task) or next((t for t in TASKS.values() if task in t.aliases), None)
    candidates = [task] if spec is None else [spec.name, *spec.aliases]
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


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise VTABDataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


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
        if num_classes is None:
            spec = get_task(task)
            task, num_classes = spec.name, spec.num_classes
        elif task in TASKS or any(task in t.aliases for t in TASKS.values()):
            spec = get_task(task)
            if spec.num_classes != num_classes:
                raise ValueError(f"num_classes={num_classes} contradicts the registry: {spec.name!r} has "
                                 f"{spec.num_classes} classes")
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

    @property
    def task_dir(self) -> Path:
        return find_task_dir(self.root, self.task)

    def setup(self, stage: str | None = None) -> None:
        task_dir = self.task_dir
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
            pin = trainer is not None and type(trainer.accelerator).__name__ == "CUDAAccelerator"
        return dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, **self._loader_kwargs())

    def _eval_loader(self) -> DataLoader:
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # every image exactly once across ranks (Lightning's default sampler would pad with repeats
            # and bias the accuracy); evaluation does not sync gradients, so uneven shards are safe
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(self.eval_set, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(self.eval_set, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
