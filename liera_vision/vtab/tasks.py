"""The task registry: VTAB-1k's 19 tasks and the synthetic demo suite.

VTAB-1k: Zhai et al., "A Large-scale Study of Representation Learning with the Visual Task
Adaptation Benchmark" (arXiv:1910.04867), as laid out by NOAH's ``get_vtab1k.py`` (folder names,
class counts; ``cifar`` is CIFAR-100).

A task is a folder name, a class count and a group. Three suites are registered: ``vtab-1k``
(natural / specialized / structured), ``synthetic`` (the generated tasks of
:mod:`liera_vision.vtab.synthetic`, in the spirit of VTAB's natural and structured groups) and
``real-mini`` (the demo's three tasks of real images from registry packages,
:mod:`liera_vision.vtab.realdata`, one per VTAB group).
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

    @property
    def names(self) -> tuple[str, ...]:
        """The registry name, then the aliases: the folder names the task may have on disk."""
        return (self.name, *self.aliases)


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
REAL_MINI_TASKS = _suite("real-mini", [  # real images shipped in scikit-learn / scikit-image (realdata.py)
    ("sk_digits", 10, "natural"),        # which handwritten digit (sklearn load_digits)
    ("sk_texture", 6, "specialized"),    # which surface / tissue a grey patch shows (skimage.data)
    ("sk_rotation", 4, "structured"),    # by how much a photo patch was rotated (0/90/180/270 degrees)
])
TASKS: dict[str, Task] = {**VTAB_TASKS, **SYNTHETIC_TASKS, **REAL_MINI_TASKS}
SUITES: dict[str, list[str]] = {"vtab-1k": list(VTAB_TASKS), "synthetic": list(SYNTHETIC_TASKS),
                                "real-mini": list(REAL_MINI_TASKS)}
ALIASES: dict[str, str] = {alias: task.name for task in TASKS.values() for alias in task.aliases}


def find_task(name: str) -> Task | None:
    """The registered task called ``name`` or one of its aliases (``cifar100`` → ``cifar``); ``None`` otherwise.

    The ONE alias resolver: the data module, the command line, the sweep and the report all go through it.
    """
    return TASKS.get(ALIASES.get(name, name))


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (an alias resolves); a task of your own keeps its name."""
    task = find_task(name)
    return task.name if task is not None else name


def get_task(name: str) -> Task:
    """The registered task called ``name`` (or one of its aliases); ``ValueError`` listing the names otherwise."""
    task = find_task(name)
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
