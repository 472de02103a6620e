"""VTAB-1k with PyTorch Lightning: task registry, data module, classifier, sweep, report, demo data.

>>> from liera_vision.vtab import VTABClassifier, VTABDataModule
>>> data = VTABDataModule(root="data/vtab-1k", task="dtd")
>>> model = VTABClassifier(arch="base", num_classes=data.num_classes, checkpoint="convnextv2_base_22k_224_ema.pt")

The command line is ``tools/train_vtab.py`` (:mod:`liera_vision.vtab.cli`), the sweep
``tools/vtab_sweep.py`` (:mod:`.sweep`), the report ``tools/vtab_report.py`` (:mod:`.report`).

Exports are lazy (PEP 562): ``import liera_vision.vtab.report`` (or ``.tasks``, ``.results``, the
sweep's parent process) loads neither torch nor Lightning, timm, torchvision or torchmetrics; the
data module and the classifier load them when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> submodule that defines it
_EXPORTS = {
    "PROTOCOLS": "data", "SPLITS": "data", "VTABDataError": "data", "VTABDataModule": "data",
    "find_task_dir": "data", "read_split": "data",
    "VTABClassifier": "module", "warmup_cosine_lr": "module",
    "append_jsonl_atomic": "results", "read_jsonl": "results", "write_json_atomic": "results",
    "ALIASES": "tasks", "SUITES": "tasks", "TASKS": "tasks", "Task": "tasks", "canonical_name": "tasks",
    "find_task": "tasks", "get_task": "tasks", "groups": "tasks", "select_tasks": "tasks",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .data import PROTOCOLS, SPLITS, VTABDataError, VTABDataModule, find_task_dir, read_split  # noqa: F401
    from .module import VTABClassifier, warmup_cosine_lr  # noqa: F401
    from .results import append_jsonl_atomic, read_jsonl, write_json_atomic  # noqa: F401
    from .tasks import (  # noqa: F401
        ALIASES,
        SUITES,
        TASKS,
        Task,
        canonical_name,
        find_task,
        get_task,
        groups,
        select_tasks,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
