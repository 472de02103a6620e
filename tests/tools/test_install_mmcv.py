"""tools/install_mmcv.py: cache keys, the C++ standard patch, integrity and toolchain errors, the check."""

from __future__ import annotations

import http.server
import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

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
    assert info["needs_cxx20"]  # torch 2.14 headers: "C++20 or later compatible compiler is required"
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


def test_sdist_with_a_wrong_hash_is_rejected(installer, monkeypatch, tmp_path):
    """A local index serving a tampered sdist: the download is refused and nothing is left behind."""
    served = tmp_path / "served"
    served.mkdir()
    (served / installer.SDIST_NAME).write_bytes(b"not the real mmcv")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            if self.path.startswith("/simple/mmcv/"):
                url = f"http://127.0.0.1:{self.server.server_port}/{installer.SDIST_NAME}"
                body = json.dumps({"files": [{"filename": installer.SDIST_NAME, "url": url}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                self.end_headers()
                self.wfile.write(body)
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        dest = tmp_path / "cache"
        dest.mkdir()
        with pytest.raises(installer.InstallError, match=r"sha256 .* does not match the pinned"):
            installer.download_sdist(dest)
        assert list(dest.iterdir()) == []
    finally:
        server.shutdown()


def test_unreachable_index_is_explained(installer, monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(installer.InstallError, match=r"could not read the package index .*PIP_INDEX_URL"):
        installer.download_sdist(tmp_path)


@pytest.mark.slow  # loads the compiled mmcv ops
def test_check_passes_on_the_installed_mmcv(installer, capsys):
    assert installer.main(["--check"]) == 0
    assert "mmcv 2.1.0 with compiled ops OK (nms kept [0, 2])" in capsys.readouterr().out
