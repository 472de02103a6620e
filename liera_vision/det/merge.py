"""Fold a trained detector's backbone adapters into its weights (``tools/merge_backbone.py``).

The output is an mmengine-style checkpoint (``meta`` + ``state_dict``, tensors and builtins only)
that the same config with ``model.backbone.adapter=None`` — e.g. the full fine-tuning config —
loads strictly, and that predicts what the adapted model predicts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope

from liera_vision.core import adapter_layers, get_adapter_config, merge_and_unload
from liera_vision.fileio import atomic_write

from .backbone import LieRAConvNeXt
from .checkpoint import check_state_dict, load_local_checkpoint

KEPT_META = ("dataset_meta", "epoch", "iter", "seed", "experiment_name", "mmengine_version")


def merge_backbone(config: str | os.PathLike | Config, checkpoint: str | os.PathLike, out: str | os.PathLike,
                   cfg_options: dict | None = None) -> Path:
    """Build ``config``'s detector, load ``checkpoint`` strictly, merge the backbone adapters, write ``out``.

    Raises ``ValueError`` (naming the config or the checkpoint) when the config's backbone carries
    no adapters or the checkpoint does not hold exactly the detector's tensors; ``out`` is then
    left untouched. ``out`` is written atomically with the usual permissions (``0666 & ~umask``).
    """
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    name = getattr(cfg, "filename", None) or "the config"
    init_default_scope(cfg.get("default_scope", "mmdet"))
    model = MODELS.build(cfg.model)
    backbone = getattr(model, "backbone", None)
    adapter = get_adapter_config(backbone) if isinstance(backbone, LieRAConvNeXt) else None
    if adapter is None:
        raise ValueError(f"{name}: model.backbone is {type(backbone).__name__ if backbone is not None else 'missing'} "
                         "without adapters; merge_backbone needs a LieRAConvNeXt config with an 'adapter'")
    ckpt = load_local_checkpoint(checkpoint, map_location="cpu")
    model.load_state_dict(check_state_dict(model, ckpt, str(checkpoint), name), strict=True)
    n_layers = len(adapter_layers(backbone))
    merge_and_unload(backbone)  # also drops the adapter config from the backbone
    meta = {k: v for k, v in (ckpt.get("meta") or {}).items() if k in KEPT_META}
    meta.update(merged_adapter=adapter.to_dict(), merged_from=str(checkpoint))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = atomic_write(out, lambda tmp: torch.save({"meta": meta, "state_dict": state}, tmp))
    print_log(f"merged {n_layers} {adapter.name} adapter layers of {checkpoint} into {path}; load it with the same "
              "config without adapters (--cfg-options model.backbone.adapter=None) or its full fine-tuning twin",
              logger="current")
    return path
