"""Pre-train a small ConvNeXt-V2 on a source task, through Lightning; cached, with a record of how it was made.

No hub is reachable from the machines this project is developed on, so the demo and the transfer
study make their own pre-trained backbone: a ConvNeXt-V2 trained in full, from timm's random
init, on a source task in the NOAH layout (the demo: ``letters`` of :mod:`.realdata`, 26 classes
disjoint from every target task; the transfer study: ``synth_source`` of :mod:`.synthetic`). The
training is the VTAB pipeline's own (:class:`~liera_vision.vtab.VTABClassifier` with
``finetune="full"`` and :class:`~liera_vision.vtab.VTABDataModule` under a Lightning ``Trainer``):
AdamW, linear warm-up from 1e-6 then cosine to 1e-5 per step, cross-entropy; it trains on
``train800val200`` and reports top-1 on ``test``.

Output, beside the source data::

    <out dir>/<task>-<settings tag>.safetensors   the timm state dict (classifier included): loads with
                                                  --model.checkpoint PATH / liera_vision.models.load_checkpoint
                                                  (a classifier of another size is skipped and reported)
    <out dir>/<task>-<settings tag>.json          the record: source task and its manifest, settings, test
                                                  accuracy, mean |W| of the layers the adapters wrap,
                                                  package versions, device, wall time, sha256 of the weights

Both are written atomically, the record last: a record whose settings, source manifest and weights
hash match is a finished pre-training and is reused; anything else is trained (again).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from liera_vision.fileio import atomic_write, sha256_file, write_text_atomic

from .noah import MANIFEST

RECORD_VERSION = 1


@dataclass(frozen=True)
class PretrainSettings:
    """How the source model trains (``ValueError`` naming the field for a bad value).

    ``weight_decay`` is AdamW's (decoupled); it sets the scale of the weights (mean |W|), which a
    Lie update multiplies, so backbones made with different values test LieRA's scale setting.
    """

    arch: str = "atto"
    image_size: int = 32
    epochs: int = 2  # few passes over many images: 8 passes over 3,640 memorised them (62 % train, 5 % test)
    lr: float = 3e-4  # 1e-3 (the fine-tuning protocol's) left the loss at ln 26 for 1,875 steps (docs/vtab.md)
    weight_decay: float = 1e-4
    batch_size: int = 32
    warmup_epochs: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        from liera_vision.models import arch_name

        arch_name(self.arch)
        for key in ("image_size", "epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PretrainSettings.{key} must be a positive integer, got {value!r}")
        if self.image_size < 32:  # four stages halve the 4x4-stem output three times; a 2x2 kernel needs 2 px left
            raise ValueError(f"PretrainSettings.image_size must be >= 32 (ConvNeXt-V2 downsamples 32x), "
                             f"got {self.image_size}")
        if not self.lr > 0:
            raise ValueError(f"PretrainSettings.lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"PretrainSettings.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"PretrainSettings.warmup_epochs must lie in [0, epochs={self.epochs}], "
                             f"got {self.warmup_epochs!r}")

    def tag(self) -> str:
        """``convnextv2_atto-32px-2ep-lr0.0003-wd0.0001-b32-w0.2-seed0``: names the files."""
        return (f"convnextv2_{self.arch}-{self.image_size}px-{self.epochs}ep-lr{self.lr:g}-wd{self.weight_decay:g}"
                f"-b{self.batch_size}-w{self.warmup_epochs:g}-seed{self.seed}")


@dataclass
class Backbone:
    """A pre-trained backbone: the weights file, its record, and whether it came from the cache."""

    path: Path
    record: dict
    cached: bool

    @property
    def mean_abs_weight(self) -> float:
        """Mean |W| over every entry of the layers the paper's adapters wrap (stem, downsamples, depthwise)."""
        return self.record["mean_abs_weight"]["all adapted"]


def adapted_layer_kinds(model: torch.nn.Module) -> dict[str, str]:
    """Name -> kind of the layers the default adapters (the paper's: stem, downsamples, depthwise convs) wrap.

    The kinds are the core's (``AdaptationReport.layers[i].kind``: ``Conv2d 4x4/s4`` = the stem,
    ``Conv2d 2x2/s2`` = the downsamples, ``Conv2d 7x7/s1 dw`` = the depthwise convs of ConvNeXt-V2),
    found by adapting a copy of ``model``; ``model`` itself is not changed.
    """
    from liera_vision.core import AdapterConfig, apply_adapters

    _, report = apply_adapters(copy.deepcopy(model), AdapterConfig())
    return {layer.name: layer.kind for layer in report.layers}


def weight_stats(model: torch.nn.Module) -> list[dict]:
    """Mean |W| and std of the layers the default adapters wrap, per layer kind and over all (last row).

    A Lie update moves ``W`` by ``W ⊙ ΔW``, so its steps scale with these numbers (kinds: see
    :func:`adapted_layer_kinds`).
    """
    by_kind: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, kind in adapted_layer_kinds(model).items():
        by_kind[kind].append(model.get_submodule(name).weight.detach().flatten())
    rows = [{"kind": kind, "layers": len(ws), "entries": sum(w.numel() for w in ws),
             "mean_abs": torch.cat(ws).abs().mean().item(), "std": torch.cat(ws).std().item()}
            for kind, ws in by_kind.items()]
    everything = torch.cat([w for ws in by_kind.values() for w in ws])
    rows.append({"kind": "all adapted", "layers": sum(r["layers"] for r in rows), "entries": everything.numel(),
                 "mean_abs": everything.abs().mean().item(), "std": everything.std().item()})
    return rows


def versions() -> dict[str, str]:
    import lightning
    import numpy
    import PIL
    import timm

    import liera_vision

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "liera_vision": liera_vision.__version__}


def _manifest(task_dir: Path) -> dict:
    done = task_dir / MANIFEST
    return json.loads(done.read_text()) if done.is_file() else {}


def read_record(path: str | os.PathLike) -> dict:
    """The record of a pre-trained backbone (``<weights>.json`` or the weights path itself)."""
    path = Path(path)
    path = path if path.suffix == ".json" else path.with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no pre-training record {path} (written by liera_vision.vtab.pretrain)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON pre-training record ({err})") from err


def _reusable(weights: Path, record_path: Path, wanted: dict) -> dict | None:
    if not (weights.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    same = all(record.get(k) == v for k, v in wanted.items())
    return record if same and record.get("sha256") == sha256_file(weights) else None


def pretrain(data_root: str | os.PathLike, task: str, num_classes: int, out_dir: str | os.PathLike,
             settings: PretrainSettings | None = None, *, progress: bool = True, accelerator: str = "auto",
             echo=print) -> Backbone:
    """Train ``settings.arch`` in full on ``<data_root>/<task>`` (NOAH layout); cached in ``out_dir``.

    Args:
        data_root: folder holding the source task folder.
        task: the source task's folder name; ``num_classes`` its class count.
        out_dir: where the weights and the record go (the demo: beside the data).
        settings: :class:`PretrainSettings` (default: atto, 32 px, 8 epochs, lr 1e-4, wd 1e-4, batch 32).
        progress: one progress bar (:class:`~liera_vision.vtab.progress.RunProgressBar`).
        accelerator: Lightning's (``"auto"``: a GPU when there is one).
        echo: where the one-line notes go.

    Returns the :class:`Backbone`; raises ``FileNotFoundError`` / ``VTABDataError`` for bad source data.
    """
    import lightning as L

    from .data import VTABDataModule, find_task_dir
    from .module import VTABClassifier
    from .progress import RunProgressBar

    settings = settings or PretrainSettings()
    out_dir = Path(out_dir)
    task_dir = find_task_dir(data_root, task)
    name = f"{task}-{settings.tag()}"
    weights, record_path = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    wanted = {"version": RECORD_VERSION, "settings": dataclasses.asdict(settings),
              "source": {"task": task, "classes": num_classes, "manifest": _manifest(task_dir)}}
    record = _reusable(weights, record_path, wanted)
    if record is not None:
        return Backbone(weights, record, cached=True)

    start = time.time()
    L.seed_everything(settings.seed, verbose=False)
    with warnings.catch_warnings():  # training from random init is the point here, not a mistake to warn about
        warnings.filterwarnings("ignore", message=".*RANDOM-INITIALISED")
        model = VTABClassifier(arch=settings.arch, num_classes=num_classes, finetune="full", lr=settings.lr,
                               weight_decay=settings.weight_decay, warmup_epochs=settings.warmup_epochs)
    data = VTABDataModule(root=str(data_root), task=task, num_classes=num_classes, batch_size=settings.batch_size,
                          num_workers=0, image_size=settings.image_size)
    callbacks = [RunProgressBar(label=f"pre-training convnextv2_{settings.arch} on {task}")] if progress else []
    trainer = L.Trainer(max_epochs=settings.epochs, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_progress_bar=progress, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec)")
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
    backbone = model.model.cpu().eval()

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "arch": settings.arch}))
    stats = weight_stats(backbone)
    record = {
        **wanted,
        "file": weights.name, "sha256": sha256_file(weights),
        "format": "safetensors, timm convnextv2 state dict with the source classifier; load with --model.checkpoint "
                  "or liera_vision.models.load_checkpoint (a classifier of another size is skipped)",
        "arch": f"convnextv2_{settings.arch}",
        "training": {"finetune": "full, from timm's random init", "optimizer": "AdamW",
                     "schedule": "linear warm-up from 1e-6 over warmup_epochs, cosine to 1e-5, per step",
                     "train_split": data.train_split, "train_images": len(data.train_set),
                     "test_split": data.eval_split, "test_images": len(data.eval_set),
                     "how": "liera_vision.vtab.pretrain.pretrain: VTABClassifier(finetune='full') + VTABDataModule "
                            "under lightning.Trainer"},
        "test_accuracy": model.test_accuracy,
        "mean_abs_weight": {row["kind"]: row["mean_abs"] for row in stats},
        "weight_stats": stats,
        "versions": versions(), "device": str(trainer.strategy.root_device), "threads": torch.get_num_threads(),
        "wall_s": round(time.time() - start, 1),
        "created": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
    }
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    echo(f"pre-trained {weights} in {record['wall_s']:.0f} s: {100 * model.test_accuracy:.1f}% test top-1 on {task} "
         f"({num_classes} classes), mean |W| of the adapted layers {record['mean_abs_weight']['all adapted']:.4f}")
    return Backbone(weights, record, cached=False)


def letters_backbone(cache: str | os.PathLike | None = None, settings: PretrainSettings | None = None, *,
                     sizes: dict[str, int] | None = None, data_seed: int = 0, progress: bool = True,
                     echo=print) -> Backbone:
    """The demo's backbone: ``settings.arch`` pre-trained on ``letters`` (:func:`.realdata.generate_letters`).

    The letters are generated into ``<cache>/source-<parameters>/letters`` and the weights and their
    record go beside them (``cache`` defaults to ``$XDG_CACHE_HOME/liera-vision/real-mini``).
    ``sizes`` are the source's split sizes (default ``realdata.SOURCE_SIZES``: it trains on
    train800val200, tests on test).
    """
    from . import realdata

    settings = settings or PretrainSettings()
    sizes = dict(sizes or realdata.SOURCE_SIZES)
    cache = Path(cache) if cache is not None else realdata.default_cache_dir().parent
    root = cache / (f"source-v{realdata.VERSION}-{settings.image_size}px-"
                    + "-".join(str(sizes[s]) for s in realdata.SOURCE_SIZES) + f"-seed{data_seed}")
    realdata.generate_letters(root, image_size=settings.image_size, sizes=sizes, seed=data_seed)
    return pretrain(root, realdata.SOURCE_TASK, len(realdata.LETTERS), root, settings, progress=progress, echo=echo)
