"""LieRA / LoRA / DoRA / PiSSA adapters for conv kernels and linear layers (torch only).

>>> from liera_vision.core import AdapterConfig, apply_adapters
>>> model, report = apply_adapters(model, AdapterConfig(method="liera", rank=8, modules_to_save=["head"]))
"""

from .compose import composed_weight, dora_rescale
from .config import AdapterConfig
from .inject import (
    AdaptationReport,
    adapter_layers,
    apply_adapters,
    get_adapter_config,
    merge_adapters,
    merge_and_unload,
    name_matches,
    select_targets,
    unload_adapters,
    unmerge_adapters,
    warn_zero_weights,
)
from .io import (
    LoadResult,
    ParameterCount,
    adapter_state_dict,
    count_parameters,
    load_adapter,
    read_adapter_file,
    save_adapter,
)
from .layers import AdapterLayer

__all__ = [
    "AdaptationReport",
    "AdapterConfig",
    "AdapterLayer",
    "LoadResult",
    "ParameterCount",
    "adapter_layers",
    "adapter_state_dict",
    "apply_adapters",
    "composed_weight",
    "count_parameters",
    "dora_rescale",
    "get_adapter_config",
    "load_adapter",
    "merge_adapters",
    "merge_and_unload",
    "name_matches",
    "read_adapter_file",
    "save_adapter",
    "select_targets",
    "unload_adapters",
    "unmerge_adapters",
    "warn_zero_weights",
]
