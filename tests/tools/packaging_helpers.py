"""Reading pyproject.toml and the lock, and stand-in distributions for offline pip runs (tests only)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (the docker image's): the same parser, published as tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"


def project_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` from a pip constraints file of ``name==version`` lines."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}:{number}: expected 'name==version', got {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def metadata_text(name: str, version: str, requires: list[str] | tuple[str, ...] = ()) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    return "\n".join(lines) + "\n"


def stub_wheel(folder: Path, name: str, version: str, requires: list[str] | tuple[str, ...] = ()) -> Path:
    """A valid, empty ``name-version-py3-none-any.whl`` whose metadata says ``requires``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    dist_info = f"{stem}.dist-info"
    files = {
        f"{dist_info}/METADATA": metadata_text(name, version, requires).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: liera-vision-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in files.items():
        writer.writerow([path, _record_hash(data), len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def stub_installed(site_packages: Path, name: str, version: str) -> Path:
    """What pip reads of an installed distribution: ``name-version.dist-info`` (METADATA, INSTALLER, RECORD)."""
    dist_info = site_packages / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(metadata_text(name, version))
    (dist_info / "INSTALLER").write_text("pip\n")
    (dist_info / "RECORD").write_text(f"{dist_info.name}/METADATA,,\n{dist_info.name}/INSTALLER,,\n"
                                      f"{dist_info.name}/RECORD,,\n")
    return dist_info


def requirement_names(specs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(s).name) for s in specs}
