"""Package layout and import directions: core imports torch only and stays light; the Lightning, MMDetection and
PEFT layers import core, never the other way round."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["lightning", "pytorch_lightning", "lightning_fabric", "mmengine", "mmdet", "mmcv", "timm", "torchmetrics"]


@pytest.mark.parametrize("module", ["liera_vision", "liera_vision.core", "liera_vision.models", "liera_vision.fileio"])
def test_import_is_light(module):
    code = (f"import sys, {module}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {module} loaded {out.strip()}"


# modules a process imports without training: the report tool, the sweep's parent process (it resolves the
# configuration and trains in child processes), the task registry, the result files (issue 10 §6)
TORCH_FREE = ["liera_vision.vtab", "liera_vision.vtab.report", "liera_vision.vtab.sweep", "liera_vision.vtab.tasks",
              "liera_vision.vtab.results", "liera_vision.fileio"]
TRAINING_STACK = ["torch", "torchvision", "lightning", "pytorch_lightning", "lightning_fabric", "timm", "torchmetrics"]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_vtab_tools_import_no_training_stack(module):
    code = (f"import sys, {module}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({TRAINING_STACK!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {module} loaded {out.strip()}"


def test_vtab_exports_stay_lazy_and_complete():
    """``liera_vision.vtab``'s names resolve on first use (PEP 562) to the objects of their submodules."""
    if importlib.util.find_spec("lightning") is None:  # looked up, not imported: the subprocess imports it
        pytest.skip("needs the vtab extra (lightning), absent from the det-only docker stack")
    code = ("import sys, liera_vision.vtab as v; assert 'torch' not in sys.modules; "
            "from liera_vision.vtab.data import VTABDataModule; from liera_vision.vtab.tasks import get_task; "
            "assert v.VTABDataModule is VTABDataModule and v.get_task is get_task; "
            "missing = [n for n in v.__all__ if getattr(v, n, None) is None]; print(missing, len(v.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] 20"


def imports_of(package: str) -> set[str]:
    found = set()
    for path in (ROOT / "liera_vision" / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the package path
                    parts = ["liera_vision", *path.relative_to(ROOT / "liera_vision").parent.parts]
                    base = parts[: len(parts) - node.level + 1]
                    found.add(".".join(base + ([node.module] if node.module else [])))
                elif node.module:
                    found.add(node.module)
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("core", ["liera_vision.models", "liera_vision.vtab", "liera_vision.det", "tools"]),
    ("models", ["liera_vision.vtab", "liera_vision.det", "tools"]),
    ("vtab", ["liera_vision.det", "tools"]),
    ("det", ["liera_vision.vtab", "tools"]),
])
def test_import_directions(package, forbidden):
    bad = {name for name in imports_of(package) for f in forbidden if name == f or name.startswith(f + ".")}
    assert not bad, f"liera_vision.{package} imports {sorted(bad)}"


def test_core_imports_only_torch_and_stdlib():
    third_party = {n.split(".")[0] for n in imports_of("core")} - set(sys.stdlib_module_names)
    assert third_party <= {"torch", "liera_vision", "yaml", "safetensors"}, third_party
