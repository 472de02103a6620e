"""requirements/lock.txt (the exact tested set) against pyproject.toml (the supported ranges) and the installers."""

from __future__ import annotations

import re
import subprocess

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .packaging_helpers import LOCK, ROOT, project_table, read_lock

LOCK_ENVIRONMENT = dict(default_environment(), python_version="3.11", python_full_version="3.11.7",
                        sys_platform="linux", platform_system="Linux", platform_machine="x86_64",
                        implementation_name="cpython", platform_python_implementation="CPython", os_name="posix")


def all_requirements() -> dict[str, list[Requirement]]:
    project = project_table()
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(spec) for spec in specs] for group, specs in groups.items()}


def test_lock_is_exact_and_made_on_the_python_setup_uses():
    pins = read_lock()  # every line name==version, each name once
    assert len(pins) > 50 and {"torch", "lightning", "mmcv", "mmdet", "peft", "tensorboard", "pytest"} <= set(pins)
    header = LOCK.read_text().split("\n", 3)[:3]
    assert any("Python 3.11" in line for line in header), header
    assert all(Version(v) for v in pins.values())


def test_every_requirement_is_locked_inside_its_range():
    pins = read_lock()
    checked = 0
    for group, requirements in all_requirements().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            if name == "liera-vision":  # the `all` extra names the others
                assert group == "all" and req.extras <= set(all_requirements()), req
                continue
            if req.marker is not None and not req.marker.evaluate(LOCK_ENVIRONMENT):
                continue  # e.g. tomli on Python < 3.11
            assert name in pins, f"[{group}] {req} is not in requirements/lock.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (group, str(req), pins[name])
            checked += 1
    assert checked >= 25


def test_ranges_are_ranges_with_upper_bounds_only_at_known_breaks():
    known_breaks = {"setuptools": "<81", "mmcv": "<2.2.0", "peft": "<0.22"}
    for group, requirements in all_requirements().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            operators = {s.operator for s in req.specifier}
            assert "==" not in operators and "===" not in operators, f"[{group}] {req} is a pin, not a range"
            uppers = {str(s) for s in req.specifier if s.operator in ("<", "<=")}
            assert uppers <= {known_breaks.get(name)}, f"[{group}] {req}: upper bound without a known break"
    extras = set(all_requirements()) - {"base"}
    assert {"vtab", "det", "peft", "dev", "all"} <= extras


def test_setup_and_ci_install_from_the_lock():
    setup = (ROOT / "tools" / "setup.sh").read_text()
    assert re.search(r"^LOCK=requirements/lock\.txt$", setup, re.M) and 'export PIP_CONSTRAINT="$LOCK"' in setup
    assert '".[all,dev]"' in setup and "tools/install_mmcv.py" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./tools/setup.sh && ./tools/test.sh" in ci
    for script in ("tools/setup.sh", "tools/test.sh", ".ci/run", "tools/docker_stack_check.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0, script
