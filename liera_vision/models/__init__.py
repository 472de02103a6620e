"""ConvNeXt-V2 construction over timm and checkpoint loading (official, FCMAE, timm layouts)."""

from .convnextv2 import (
    ARCHS,
    CheckpointReport,
    Conversion,
    arch_name,
    build_convnextv2,
    create_convnextv2,
    detect_format,
    fcmae_to_official,
    load_checkpoint,
    read_state_dict,
    select_prefix,
    split_pretraining_keys,
    timm_to_official,
    to_timm,
    unwrap_state_dict,
)

__all__ = [
    "ARCHS",
    "CheckpointReport",
    "Conversion",
    "arch_name",
    "build_convnextv2",
    "create_convnextv2",
    "detect_format",
    "fcmae_to_official",
    "load_checkpoint",
    "read_state_dict",
    "select_prefix",
    "split_pretraining_keys",
    "timm_to_official",
    "to_timm",
    "unwrap_state_dict",
]
