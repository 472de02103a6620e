"""LieRA / LoRA / DoRA / PiSSA adapters for conv kernels (any spatial dimension) and linear layers (torch only).

>>> from liera_vision.core import AdapterConfig, apply_adapters
>>> model, report = apply_adapters(model, AdapterConfig(rank=8, modules_to_save=["head"]))  # LieRA, Taylor

The method axes are registries: :data:`~.delta.INITS` (how ΔW starts), :data:`~.compose.COMPOSITIONS`
(how ΔW meets W), :data:`~.compose.POST_STEPS` (what follows), :data:`~.scale.SCALE_RULES` (weight-derived
alpha / rank).
"""

from .compose import COMPOSITIONS, POST_STEPS, composed_weight, dora_rescale
from .config import AdapterConfig
from .delta import FACTORIZATIONS, INITS
from .inject import (
    AdaptationReport,
    Selection,
    active_adapter,
    adapter_configs,
    adapter_layers,
    apply_adapters,
    delete_adapter,
    disable_adapters,
    find_targets,
    get_adapter_config,
    merge_adapters,
    merge_and_unload,
    model_transaction,
    name_matches,
    reset_adapters,
    select_targets,
    set_adapter,
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
    write_adapter_file,
)
from .layers import AdapterLayer
from .scale import SCALE_RULES

__all__ = [
    "COMPOSITIONS",
    "FACTORIZATIONS",
    "INITS",
    "POST_STEPS",
    "SCALE_RULES",
    "AdaptationReport",
    "AdapterConfig",
    "AdapterLayer",
    "LoadResult",
    "ParameterCount",
    "Selection",
    "active_adapter",
    "adapter_configs",
    "adapter_layers",
    "adapter_state_dict",
    "apply_adapters",
    "composed_weight",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "dora_rescale",
    "find_targets",
    "get_adapter_config",
    "load_adapter",
    "merge_adapters",
    "merge_and_unload",
    "model_transaction",
    "name_matches",
    "read_adapter_file",
    "reset_adapters",
    "save_adapter",
    "select_targets",
    "set_adapter",
    "unload_adapters",
    "unmerge_adapters",
    "warn_zero_weights",
    "write_adapter_file",
]
