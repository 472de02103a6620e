#!/usr/bin/env python
"""Install mmcv 2.1.0 *with compiled ops* into the running interpreter, reproducibly.

OpenMMLab publishes no CPU wheel for mmcv 2.1.0 and its sdist asks for ``-std=c++17``,
which the headers of torch >= 2.10 reject (they need C++20). This script:

1. does nothing if an importable mmcv 2.1.x with working ``mmcv.ops`` is already installed;
2. else installs a wheel we built earlier, cached outside the repository under
   ``$LIERA_VISION_CACHE/wheels`` (default ``~/.cache/liera-vision/wheels``) and keyed by
   interpreter, platform, torch version and op flavour (cpu / cuda);
3. else fetches the sdist with ``pip download`` (so the index, mirror, proxy and certificate
   settings of the user's pip configuration apply; sha256-pinned through pip's hash checking),
   patches the C++ standard flag only when the installed torch requires C++20, builds a wheel with
   ``pip wheel`` (CUDA ops when ``nvcc`` and a GPU torch with a visible GPU are present, CPU ops
   otherwise), stores it in the cache and installs it with pip (mmcv's own requirements come from
   the wheel's metadata, so a ``PIP_CONSTRAINT`` / ``-c`` lock applies to them);
4. finally checks ``from mmcv.ops import RoIAlign, nms`` and runs a tiny CPU ``nms``.

Only what pip cannot do lives here: the C++ standard patch, the wheel cache keyed by torch version
and op flavour, the build progress / log, and the check.

Run it with the interpreter of the environment to install into, e.g.
``.venv/bin/python tools/install_mmcv.py``; ``--check`` only verifies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

MMCV_VERSION = "2.1.0"
SDIST_NAME = f"mmcv-{MMCV_VERSION}.tar.gz"
SDIST_SHA256 = "d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f"

VERIFY_SNIPPET = r"""
import torch
import mmcv
from mmcv.ops import RoIAlign, nms
assert mmcv.__version__.startswith("2.1"), mmcv.__version__
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
scores = torch.tensor([0.9, 0.8, 0.7])
dets, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep.tolist()
RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)
print(f"mmcv {mmcv.__version__} with compiled ops OK (nms kept {keep.tolist()})")
"""


class InstallError(RuntimeError):
    """A failure with a message that says what is missing and what to do."""


def log(msg: str) -> None:
    print(f"[install_mmcv] {msg}", flush=True)


def cache_root() -> Path:
    base = os.environ.get("LIERA_VISION_CACHE") or os.path.join(Path.home(), ".cache", "liera-vision")
    return Path(base) / "wheels"


def mmcv_works(python: str = sys.executable) -> tuple[bool, str]:
    proc = subprocess.run([python, "-c", VERIFY_SNIPPET], capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, out


def torch_info() -> dict:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - setup installs torch first
        raise InstallError("torch is not installed in this environment; install the project first "
                           "(pip install -e .) so that mmcv is built against the right torch") from err
    include = Path(torch.__file__).parent / "include" / "ATen" / "ATen.h"
    needs_cxx20 = include.is_file() and "202002L" in include.read_text(errors="replace")
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": bool(torch.version.cuda) and torch.cuda.is_available(),
        "needs_cxx20": needs_cxx20,
    }


def ops_flavour(info: dict) -> str:
    if os.environ.get("FORCE_CUDA") == "1":
        return "cuda"
    if info["gpu"] and shutil.which("nvcc"):
        return "cuda"
    return "cpu"


def cache_dir_for(info: dict, flavour: str) -> Path:
    tag = (f"mmcv-{MMCV_VERSION}_torch-{info['version']}_{flavour}_"
           f"cp{sys.version_info.major}{sys.version_info.minor}_{sysconfig.get_platform()}")
    return cache_root() / re.sub(r"[^A-Za-z0-9._+-]", "_", tag)


def check_toolchain() -> None:
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(cxx) and not shutil.which("g++"):
        raise InstallError(f"no C++ compiler found (looked for '{cxx}' and 'g++'). Install one, e.g. "
                           "'apt-get install build-essential' (Debian/Ubuntu) or 'dnf install gcc-c++'.")
    py_h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not py_h.is_file():
        raise InstallError(f"Python headers not found ({py_h} is missing). Install them, e.g. "
                           f"'apt-get install python{sys.version_info.major}.{sys.version_info.minor}-dev'.")


def download_sdist(dest: Path) -> Path:
    """``dest/mmcv-2.1.0.tar.gz``: reused when present and intact, else fetched by ``pip download``.

    pip does the network part with the user's configuration (``PIP_INDEX_URL``, ``pip.conf``, proxies,
    mirrors) and refuses a file whose sha256 is not ``SDIST_SHA256`` (hash-checking mode); ``--no-binary``
    keeps a wheel index from answering with a binary. Raises ``InstallError`` naming pip's complaint.
    """
    target = dest / SDIST_NAME
    if target.is_file() and sha256(target) == SDIST_SHA256:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmcv-sdist-") as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"mmcv=={MMCV_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        download_dir = Path(tmp) / "download"
        # --no-build-isolation: pip reads the sdist's metadata with this environment's setuptools (nothing is
        # built here). MMCV_WITH_OPS=1: with 0, mmcv's setup.py calls itself "mmcv-lite" and pip rejects it.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "mmcv",
               "--no-build-isolation", "-d", str(download_dir), "-r", str(requirement)]
        log(f"fetching {SDIST_NAME} with pip download (your pip index settings apply)")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MMCV_WITH_OPS="1"))
        if proc.returncode != 0:
            said = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
            raise InstallError(f"pip could not download {SDIST_NAME} (exit {proc.returncode}); pip said:\n{said}\n"
                               "pip uses your index configuration (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, pip.conf, "
                               f"proxy settings). Fix that, or put {SDIST_NAME} (sha256 {SDIST_SHA256}) into "
                               f"{dest} by hand.")
        got = download_dir / SDIST_NAME
        if not got.is_file():
            found = sorted(p.name for p in download_dir.iterdir()) if download_dir.is_dir() else []
            raise InstallError(f"pip download finished but left {found} instead of {SDIST_NAME}")
        digest = sha256(got)  # pip checked it already; a second look costs nothing
        if digest != SDIST_SHA256:
            raise InstallError(f"{SDIST_NAME}: sha256 {digest} does not match the pinned {SDIST_SHA256}")
        part = target.with_name(target.name + ".part")
        shutil.copyfile(got, part)
        part.replace(target)
    return target


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_cxx_standard(setup_py: Path) -> int:
    """Raise mmcv's hard-coded -std=c++17 to c++20 (torch >= 2.10 headers need it)."""
    text = setup_py.read_text()
    patched, count = re.subn(r"-std=c\+\+17", "-std=c++20", text)
    setup_py.write_text(patched)
    return count


def build_wheel(info: dict, flavour: str, out_dir: Path) -> Path:
    check_toolchain()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = str(os.cpu_count() or 2)
    log(f"no cached wheel for torch {info['version']} ({flavour} ops): building mmcv {MMCV_VERSION} "
        f"from source with {jobs} jobs. The first build takes ~15 minutes on 2 cores; "
        f"later setups reuse {out_dir}.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ninja", "packaging", "psutil"], check=True)
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        sdist = download_sdist(cache_root())
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links out of tmp
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - older patch releases; the sdist's sha256 was checked above
                tar.extractall(tmp)
        src = Path(tmp) / f"mmcv-{MMCV_VERSION}"
        if info["needs_cxx20"]:
            n = patch_cxx_standard(src / "setup.py")
            log(f"torch {info['version']} requires C++20: patched {n} '-std=c++17' flags in setup.py")
        env = dict(os.environ, MMCV_WITH_OPS="1", MAX_JOBS=os.environ.get("MAX_JOBS", jobs))
        if flavour == "cuda":
            env["FORCE_CUDA"] = "1"
        log_path = out_dir / "build.log"
        cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
               "-w", str(Path(tmp) / "dist"), str(src)]
        start = time.time()
        with open(log_path, "w") as log_fh:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                log_fh.write(line)
                step = re.match(r"\s*\[(\d+)/(\d+)\].*?([\w./-]+\.(?:cpp|cu|o|so))", line)
                if step:
                    elapsed = time.time() - start
                    log(f"[{step[1]}/{step[2]}] {Path(step[3]).name}  ({elapsed / 60:.1f} min)")
                elif re.search(r"\berror\b", line, re.IGNORECASE) and "Werror" not in line:
                    print(line.rstrip(), flush=True)
            rc = proc.wait()
        if rc != 0:
            raise InstallError(f"building mmcv failed (exit {rc}); the full log is {log_path}")
        wheels = list((Path(tmp) / "dist").glob("mmcv-*.whl"))
        if len(wheels) != 1:
            raise InstallError(f"expected one mmcv wheel after the build, found {wheels}")
        final = out_dir / wheels[0].name
        shutil.copy2(wheels[0], final.with_suffix(".part"))
        final.with_suffix(".part").replace(final)
    (out_dir / "build-info.json").write_text(json.dumps(dict(info, flavour=flavour, python=sys.version,
                                                             minutes=round((time.time() - start) / 60, 1)),
                                                        indent=2))
    log(f"built {final.name} in {(time.time() - start) / 60:.1f} min")
    return final


def install_wheel(wheel: Path) -> None:
    log(f"installing {wheel}")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    # replace a broken mmcv 2.1.0 in place, then let pip add the wheel's own requirements (addict, mmengine,
    # numpy, opencv-python, ...; not torch) under whatever constraints the caller set (PIP_CONSTRAINT)
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, str(wheel)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the installed mmcv")
    parser.add_argument("--rebuild", action="store_true", help="ignore installed mmcv and cached wheels")
    args = parser.parse_args(argv)
    try:
        if args.check:
            ok, out = mmcv_works()
            print(out)
            return 0 if ok else 1
        if not args.rebuild:
            ok, out = mmcv_works()
            if ok:
                log(f"already installed: {out.splitlines()[-1]}")
                return 0
        info = torch_info()
        flavour = ops_flavour(info)
        wheel_dir = cache_dir_for(info, flavour)
        cached = sorted(wheel_dir.glob(f"mmcv-{MMCV_VERSION}-*.whl"))
        if cached and not args.rebuild:
            log(f"using cached wheel {cached[-1]}")
            wheel = cached[-1]
        else:
            wheel = build_wheel(info, flavour, wheel_dir)
        install_wheel(wheel)
        ok, out = mmcv_works()
        print(out)
        if not ok:
            raise InstallError(f"mmcv was installed from {wheel} but 'from mmcv.ops import nms' fails (see above). "
                               f"Delete {wheel_dir} and run again with --rebuild.")
        return 0
    except InstallError as err:
        print(f"[install_mmcv] ERROR: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
