"""VTAB-1k with PyTorch Lightning: task registry, data module, classifier, sweep, report, demo data.

>>> from liera_vision.vtab import VTABClassifier, VTABDataModule
>>> data = VTABDataModule(root="data/vtab-1k", task="dtd")
>>> model = VTABClassifier(arch="base", num_classes=data.num_classes, checkpoint="convnextv2_base_22k_224_ema.pt")

The command line is ``tools/train_vtab.py`` (:mod:`liera_vision.vtab.cli`), the sweep
``tools/vtab_sweep.py`` (:mod:`.sweep`), the report ``tools/vtab_report.py`` (:mod:`.report`).
"""

from .data import PROTOCOLS, SPLITS, VTABDataError, VTABDataModule, find_task_dir, read_split
from .module import VTABClassifier, warmup_cosine_lr
from .results import append_jsonl_atomic, read_jsonl, write_json_atomic
from .tasks import ALIASES, SUITES, TASKS, Task, get_task, groups, select_tasks

__all__ = [
    "ALIASES",
    "PROTOCOLS",
    "SPLITS",
    "SUITES",
    "TASKS",
    "Task",
    "VTABClassifier",
    "VTABDataError",
    "VTABDataModule",
    "append_jsonl_atomic",
    "find_task_dir",
    "get_task",
    "groups",
    "read_jsonl",
    "read_split",
    "select_tasks",
    "warmup_cosine_lr",
    "write_json_atomic",
]
