"""`pip install -e .` (core only) leaves an environment's own torch in place when it is within range.

The environment is a venv without pip whose only distribution is a stand-in ``torch-X.dist-info`` (what
pip reads of an installed torch); pip runs offline and ignores this machine's configuration
(``PIP_CONFIG_FILE=/dev/null``, ``--no-index``) and may choose from stand-in wheels of every base
dependency at the lock's versions, the lock's torch included. ``--dry-run --report`` says what pip would
install. Seconds, no download, nothing installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .packaging_helpers import ROOT, project_table, read_lock, stub_installed, stub_wheel


def venv_with_torch(where: Path, torch_version: str) -> Path:
    """A pip-less venv holding a stand-in torch and (linked) this environment's setuptools; its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    stub_installed(site, "torch", torch_version)
    # --no-build-isolation: pip reads the project's metadata with this setuptools, offline
    setuptools = metadata.distribution("setuptools")
    here = Path(setuptools.locate_file(""))
    top_level = ["setuptools", "pkg_resources", "_distutils_hack"]
    dist_info = [p.name for p in here.glob("setuptools-*.dist-info")]
    for name in top_level + dist_info:
        if (here / name).exists():
            (site / name).symlink_to(here / name)
    return python


def project_copy(where: Path) -> Path:
    """The metadata pip reads: pyproject.toml, README.md and an empty package."""
    (where / "liera_vision").mkdir(parents=True)
    (where / "liera_vision" / "__init__.py").write_text("")
    for name in ("pyproject.toml", "README.md"):
        (where / name).write_text((ROOT / name).read_text())
    return where


def dry_run_install(python: Path, project: Path, wheels: Path, report: Path) -> dict[str, str]:
    """``{name: version}`` that ``pip install -e project`` would install into ``python``'s environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(report.parent),
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--report", str(report),
           "--no-index", "--find-links", str(wheels), "--no-build-isolation", "-e", str(project)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


@pytest.fixture(scope="module")
def base_dependencies() -> list[Requirement]:
    return [Requirement(spec) for spec in project_table()["dependencies"]]


@pytest.fixture(scope="module")
def offered_wheels(tmp_path_factory, base_dependencies) -> Path:
    """Stand-in wheels of every base dependency at the lock's version (torch too: a newer one is on offer)."""
    lock = read_lock()
    folder = tmp_path_factory.mktemp("wheels")
    for requirement in base_dependencies:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"requirements/lock.txt has no pin for the base dependency {name}"
        stub_wheel(folder, name, lock[name])
    return folder


def test_base_dependencies_are_only_what_the_core_needs(base_dependencies):
    names = {canonicalize_name(r.name) for r in base_dependencies}
    assert names == {"torch", "safetensors", "pyyaml"}
    torch_range = next(r.specifier for r in base_dependencies if r.name == "torch")
    # the docker image's torch (2.1.2) and the lock's are both inside the range
    assert torch_range.contains("2.1.2") and torch_range.contains(read_lock()["torch"])
    assert not torch_range.contains("2.0.1")


@pytest.mark.parametrize("installed", ["2.1.2", "2.3.0"])
def test_editable_install_keeps_a_torch_in_range(installed, tmp_path, offered_wheels, base_dependencies):
    lock_torch = read_lock()["torch"]
    assert Version(installed) < Version(lock_torch)  # a newer torch is on offer, pip must not take it
    python = venv_with_torch(tmp_path / "env", installed)
    plan = dry_run_install(python, project_copy(tmp_path / "project"), offered_wheels, tmp_path / "report.json")
    assert "torch" not in plan, f"pip would replace torch {installed} with {plan.get('torch')}"
    expected = {"liera-vision"} | {canonicalize_name(r.name) for r in base_dependencies} - {"torch"}
    assert set(plan) == expected and plan["liera-vision"] == project_table()["version"]


def test_a_torch_below_the_range_is_replaced(tmp_path, offered_wheels):
    """The control: the same run does replace a torch the project does not support (2.0.1 < 2.1)."""
    python = venv_with_torch(tmp_path / "env", "2.0.1")
    plan = dry_run_install(python, project_copy(tmp_path / "project"), offered_wheels, tmp_path / "report.json")
    assert plan["torch"] == read_lock()["torch"]
