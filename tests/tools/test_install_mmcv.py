"""tools/install_mmcv.py: cache keys, the C++ standard patch, the sdist fetched through pip, errors, the check.

The pip tests run the real ``pip download`` offline: a pip configuration file that names only a local
folder (``no-index`` + ``find-links``) serves a stand-in ``mmcv-2.1.0.tar.gz`` of a few hundred bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installer():
    spec = importlib.util.spec_from_file_location("install_mmcv", ROOT / "tools" / "install_mmcv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cxx_patch_only_touches_the_standard_flag(installer, tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("a = ['-std=c++17']\nb = ['-Wall', '-std=c++17']\nc = '-std=c++14'\n")
    assert installer.patch_cxx_standard(setup_py) == 2
    assert setup_py.read_text() == "a = ['-std=c++20']\nb = ['-Wall', '-std=c++20']\nc = '-std=c++14'\n"


def test_torch_here_requires_cxx20_and_cache_key_names_it(installer, monkeypatch, tmp_path):
    info = installer.torch_info()
    # torch >= 2.10 headers: "C++20 or later compatible compiler is required"; torch 2.1 (docker) builds as C++17
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert info["needs_cxx20"] == ((major, minor) >= (2, 10)) and info["version"] == torch.__version__
    monkeypatch.setenv("LIERA_VISION_CACHE", str(tmp_path))
    key = installer.cache_dir_for(info, "cpu")
    assert key.parent == tmp_path / "wheels"
    assert info["version"].replace("+", "_") in key.name.replace("+", "_") and "_cpu_" in key.name
    assert f"cp{sys.version_info.major}{sys.version_info.minor}" in key.name
    assert installer.cache_dir_for(info, "cuda") != key


def test_missing_compiler_and_headers_are_explained(installer, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(installer.InstallError, match=r"no C\+\+ compiler found .*build-essential"):
        installer.check_toolchain()
    monkeypatch.undo()
    monkeypatch.setattr(installer.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    with pytest.raises(installer.InstallError, match=r"Python headers not found .*Python.h is missing.*-dev"):
        installer.check_toolchain()


def fake_sdist(folder: Path, name: str = "mmcv", version: str = "2.1.0") -> Path:
    """A minimal, real sdist ``mmcv-2.1.0.tar.gz`` (setup.py + PKG-INFO) that pip can read the metadata of."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mmcv-{version}.tar.gz"
    files = {
        "setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for filename, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"mmcv-{version}/{filename}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def local_pip_index(monkeypatch, tmp_path):
    """pip configured, through a pip.conf like a user's, to see only ``tmp_path/index`` (no network)."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    index = tmp_path / "index"
    index.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nno-index = true\nfind-links = {index}\ndisable-pip-version-check = true\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    return index


def test_sdist_is_fetched_through_pip_with_the_users_index_settings(installer, local_pip_index, monkeypatch,
                                                                     tmp_path):
    served = fake_sdist(local_pip_index)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setattr(installer, "SDIST_SHA256", digest)
    dest = tmp_path / "cache"
    got = installer.download_sdist(dest)
    assert got == dest / "mmcv-2.1.0.tar.gz" and got.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["mmcv-2.1.0.tar.gz"]  # no .part left behind

    # an intact cached sdist is reused without asking pip again
    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(installer.subprocess, "run", no_pip)
    assert installer.download_sdist(dest) == got


def test_sdist_with_a_wrong_hash_is_rejected_by_pip(installer, local_pip_index, tmp_path):
    """A tampered sdist on the index: pip's hash check refuses it and nothing is left in the cache."""
    fake_sdist(local_pip_index)  # its sha256 is not the pinned one
    dest = tmp_path / "cache"
    with pytest.raises(installer.InstallError) as err:
        installer.download_sdist(dest)
    message = str(err.value)
    assert "pip could not download mmcv-2.1.0.tar.gz" in message
    assert "DO NOT MATCH THE HASHES" in message and installer.SDIST_SHA256 in message
    assert list(dest.iterdir()) == []


def test_unreachable_package_is_explained(installer, local_pip_index, tmp_path):
    """Nothing on the configured index: the error carries pip's reason and says what to do."""
    with pytest.raises(installer.InstallError) as err:
        installer.download_sdist(tmp_path / "cache")
    message = str(err.value)
    assert re.search(r"No matching distribution found for mmcv==2\.1\.0", message)
    assert "PIP_INDEX_URL" in message and "by hand" in message


def test_no_package_index_host_in_code():
    """pip finds packages (the user's configuration applies); no Python or shell file names an index host.

    The Dockerfile's OpenMMLab wheel index (a `-f` for prebuilt CUDA wheels) is the one exception.
    """
    hosts = re.compile(r"pypi\.org|pythonhosted\.org|openmmlab\.com|download\.pytorch\.org|/simple/?[\"' ]")
    skip = {".venv", ".git", "build", "dist", "runs", "work_dirs", "__pycache__", ".pytest_cache", ".ruff_cache"}
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]  # prune: never walk into a venv
        here = Path(folder)
        files += [here / n for n in names if Path(n).suffix in (".py", ".sh") or here.name in ("tools", ".ci")]
    assert ROOT / "tools" / "install_mmcv.py" in files and ROOT / ".ci" / "run" in files
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in files
                 for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if hosts.search(line)]
    assert not offenders, offenders


@pytest.mark.slow  # loads the compiled mmcv ops
def test_check_passes_on_the_installed_mmcv(installer, capsys):
    assert installer.main(["--check"]) == 0
    assert "mmcv 2.1.0 with compiled ops OK (nms kept [0, 2])" in capsys.readouterr().out
