"""ConvNeXt-V2 construction over timm and checkpoint conversion (official, FCMAE, timm)."""

from .convnextv2 import (
    ARCHS,
    CheckpointReport,
    arch_name,
    create_convnextv2,
    detect_format,
    fcmae_to_official,
    load_checkpoint,
    official_to_fcmae,
    read_state_dict,
    timm_to_official,
    to_timm,
)

__all__ = [
    "ARCHS",
    "CheckpointReport",
    "arch_name",
    "create_convnextv2",
    "detect_format",
    "fcmae_to_official",
    "load_checkpoint",
    "official_to_fcmae",
    "read_state_dict",
    "timm_to_official",
    "to_timm",
]
