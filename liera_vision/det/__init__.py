"""MMDetection plugin: the ``LieRAConvNeXt`` backbone, checked COCO data and metric, a checked runner, merging.

Configs pull it in with ``custom_imports=dict(imports=['liera_vision.det'], allow_failed_imports=False)``.
Importing it only registers classes: ``LieRAConvNeXt`` (``mmdet.registry.MODELS``),
``CheckedCocoDataset`` (``DATASETS``), ``CheckedCocoMetric`` (``METRICS``) and ``CheckedRunner``
(mmengine's ``RUNNERS``; selected by ``runner_type='CheckedRunner'``, see ``checkpoint``). It
changes no loader or global setting of mmengine or torch.
"""

from .backbone import LieRAConvNeXt
from .checkpoint import (
    MMENGINE_CHECKPOINT_GLOBALS,
    CheckedRunner,
    check_state_dict,
    load_local_checkpoint,
    mmengine_checkpoint_globals,
    resolve_checkpoint,
)
from .data import CheckedCocoDataset, CheckedCocoMetric, read_coco_annotations
from .merge import merge_backbone

__all__ = [
    "MMENGINE_CHECKPOINT_GLOBALS",
    "CheckedCocoDataset",
    "CheckedCocoMetric",
    "CheckedRunner",
    "LieRAConvNeXt",
    "check_state_dict",
    "load_local_checkpoint",
    "merge_backbone",
    "mmengine_checkpoint_globals",
    "read_coco_annotations",
    "resolve_checkpoint",
]
