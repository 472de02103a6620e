"""Fold a trained detector's backbone adapters into its weights (``tools/merge_backbone.py``).

The output is an mmengine-style checkpoint (``meta`` + ``state_dict``, tensors and builtins only)
that the same config with ``model.backbone.adapter=None`` — e.g. the full fine-tuning config —
loads strictly, and that predicts what the adapted model predicts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

from liera_vision.core import adapter_layers, merge_and_unload

from .backbone import LieRAConvNeXt

KEPT_META = ("dataset_meta", "epoch", "iter", "seed", "experiment_name", "mmengine_version")


def merge_backbone(config: str | os.PathLike | Config, checkpoint: str | os.PathLike, out: str | os.PathLike,
                   cfg_options: dict | None = None) -> Path:
    """Build ``config``'s detector, load ``checkpoint`` strictly, merge the backbone adapters, write ``out``."""
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    model = MODELS.build(cfg.model)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, LieRAConvNeXt) or backbone.adapter is None:
        raise ValueError(f"{getattr(cfg, 'filename', config)}: model.backbone is "
                         f"{type(backbone).__name__ if backbone is not None else 'missing'} without adapters; "
                         "merge_backbone needs a LieRAConvNeXt config with an 'adapter'")
    ckpt = _load_checkpoint(str(checkpoint), map_location="cpu")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not match {getattr(cfg, 'filename', 'the config')}: "
                         f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:3]} (was it trained with this config?)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{checkpoint} does not match {getattr(cfg, 'filename', 'the config')}: "
                         f"{str(err).strip().splitlines()[-1]}") from err
    adapter, n_layers = backbone.adapter, len(adapter_layers(backbone))
    merge_and_unload(backbone)
    backbone.adapter = None
    meta = {k: v for k, v in (ckpt.get("meta") or {}).items() if k in KEPT_META}
    meta.update(merged_adapter=adapter.to_dict(), merged_from=str(checkpoint))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = _save_atomic({"meta": meta, "state_dict": state}, Path(out))
    print_log(f"merged {n_layers} {adapter.name} adapter layers of {checkpoint} into {path}; load it with the same "
              "config without adapters (--cfg-options model.backbone.adapter=None) or its full fine-tuning twin",
              logger="current")
    return path


def _save_atomic(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
