"""MMDetection plugin: the ``LieRAConvNeXt`` backbone, a checked COCO dataset, merge and CLI helpers.

Configs pull it in with ``custom_imports=dict(imports=['liera_vision.det'], allow_failed_imports=False)``.
Importing it registers ``LieRAConvNeXt`` (``mmdet.registry.MODELS``), ``CheckedCocoDataset``
(``DATASETS``) and a ``weights_only`` loader for mmengine's local checkpoints (see ``checkpoint``).
"""

from .backbone import LieRAConvNeXt, timm_to_plugin_key
from .checkpoint import MMENGINE_CHECKPOINT_GLOBALS, load_local_checkpoint, resolve_checkpoint
from .data import CheckedCocoDataset, read_coco_annotations
from .merge import merge_backbone

__all__ = [
    "MMENGINE_CHECKPOINT_GLOBALS",
    "CheckedCocoDataset",
    "LieRAConvNeXt",
    "load_local_checkpoint",
    "merge_backbone",
    "read_coco_annotations",
    "resolve_checkpoint",
    "timm_to_plugin_key",
]
