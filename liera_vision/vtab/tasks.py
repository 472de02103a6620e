"""The task registry: VTAB-1k's 19 tasks (REFERENCE.md §2) and the synthetic demo suite.

A task is a folder name, a class count and a group. Two suites are registered: ``vtab-1k``
(natural / specialized / structured) and ``synthetic`` (the generated demo tasks of
:mod:`liera_vision.vtab.synthetic`, in the spirit of VTAB's natural and structured groups).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    num_classes: int
    group: str
    suite: str
    aliases: tuple[str, ...] = ()


def _suite(suite: str, rows: list[tuple]) -> dict[str, Task]:
    return {row[0]: Task(row[0], row[1], row[2], suite, tuple(row[3]) if len(row) > 3 else ()) for row in rows}


VTAB_TASKS = _suite("vtab-1k", [
    ("cifar", 100, "natural", ["cifar100"]),
    ("caltech101", 102, "natural"),
    ("dtd", 47, "natural"),
    ("oxford_flowers102", 102, "natural"),
    ("oxford_iiit_pet", 37, "natural", ["oxford_pet"]),
    ("svhn", 10, "natural"),
    ("sun397", 397, "natural"),
    ("patch_camelyon", 2, "specialized"),
    ("eurosat", 10, "specialized"),
    ("resisc45", 45, "specialized"),
    ("diabetic_retinopathy", 5, "specialized"),
    ("clevr_count", 8, "structured"),
    ("clevr_dist", 6, "structured"),
    ("dmlab", 6, "structured"),
    ("kitti", 4, "structured"),
    ("dsprites_loc", 16, "structured"),
    ("dsprites_ori", 16, "structured"),
    ("smallnorb_azi", 18, "structured"),
    ("smallnorb_ele", 9, "structured"),
])
SYNTHETIC_TASKS = _suite("synthetic", [
    ("synth_shape", 4, "natural"),         # which shape (circle / square / triangle / cross)
    ("synth_count", 4, "structured"),      # how many objects (1-4), like clevr_count
    ("synth_position", 4, "structured"),   # horizontal position bin, like dsprites_loc
    ("synth_orientation", 4, "structured"),  # orientation bin of a bar, like dsprites_ori
])
TASKS: dict[str, Task] = {**VTAB_TASKS, **SYNTHETIC_TASKS}
SUITES: dict[str, list[str]] = {"vtab-1k": list(VTAB_TASKS), "synthetic": list(SYNTHETIC_TASKS)}
ALIASES: dict[str, str] = {alias: task.name for task in TASKS.values() for alias in task.aliases}


def get_task(name: str) -> Task:
    """The registered task called ``name`` (or one of its aliases); ``ValueError`` listing the names otherwise."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise ValueError(f"unknown task {name!r}; VTAB-1k tasks: {SUITES['vtab-1k']}, "
                         f"aliases: {sorted(ALIASES)}, synthetic tasks: {SUITES['synthetic']} "
                         "(for a task of your own pass num_classes explicitly)")
    return task


def groups(suite: str = "vtab-1k") -> dict[str, list[str]]:
    """Group name → task names of ``suite``, both in registry order."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    out: dict[str, list[str]] = {}
    for name in SUITES[suite]:
        out.setdefault(TASKS[name].group, []).append(name)
    return out


def select_tasks(spec: str | list[str], suite: str = "vtab-1k") -> list[str]:
    """Canonical task names from ``"all"``, a group name, or a comma-separated / list mix of both and task names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    suite_groups = groups(suite)
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "all":
            chosen = SUITES[suite]
        elif item in suite_groups:
            chosen = suite_groups[item]
        else:
            chosen = [get_task(item).name]
        names += [n for n in chosen if n not in names]
    if not names:
        raise ValueError(f"no task selected by {spec!r}; use 'all', a group ({list(suite_groups)}) or task names")
    return names
