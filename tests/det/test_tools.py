"""Static checks of what cannot run here: the docker image, the torchrun scripts, the paths the docs name."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import tomllib
import torch

from liera_vision.det import cli

from .conftest import ATTO_LIERA, ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
DET_PINS = ("mmengine", "mmdet", "mmcv", "timm", "safetensors", "pycocotools")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    assert not current, f"unterminated instruction: {current!r}"
    return instructions


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["det"]
    pins = {}
    for spec in specs:
        name, version = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?(.*)", spec).groups()
        pins[name.lower()] = version.strip()
    return pins


def test_dockerfile_parses_and_pins_agree_with_pyproject():
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM" and set(keywords) <= {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "VOLUME", "CMD", "ARG"}
    runs = " ".join(args for k, args in steps if k == "RUN")
    pins = pyproject_pins()
    for name in DET_PINS:
        in_docker = re.findall(rf'"{name}==([^"]+)"', runs)
        assert in_docker == [pins[name].removeprefix("==")], (name, in_docker, pins[name])
    assert f'"setuptools{pins["setuptools"]}"' in runs  # pkg_resources for mmengine
    assert re.search(r'"numpy>=1\.26,<2"', runs) and pins["numpy"] == ">=1.26"
    assert "pip install --no-deps" in runs  # torch stays the image's, not pyproject's 2.14.1


def test_mmcv_wheel_index_matches_the_base_image():
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    image = steps[0][1]
    torch_version, cuda = _image_versions(image)
    runs = " ".join(args for k, args in steps if k == "RUN")
    index = re.search(r"https://download\.openmmlab\.com/mmcv/dist/(cu\d+)/torch(\d+\.\d+)/index\.html", runs)
    assert index, "no OpenMMLab mmcv wheel index"
    assert index.groups() == (f"cu{cuda}", torch_version)
    # OpenMMLab publishes mmcv 2.1.0 wheels for torch 2.0 / 2.1 only (mmdet 3.3.0 needs mmcv < 2.2.0)
    assert torch_version in ("2.0", "2.1") and "--only-binary=mmcv" in runs


def _image_versions(image: str) -> tuple[str, str]:
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+)\.\d+-cuda(\d+)\.(\d+)-cudnn\d+-(runtime|devel)", image)
    assert match, image
    return match[1], match[2] + match[3]


def test_every_path_the_image_copies_or_runs_exists():
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    copied = [src for k, args in steps if k == "COPY" for src in args.split()[:-1]]
    assert {"pyproject.toml", "liera_vision", "configs", "tools"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
    cmd = json.loads(next(args for k, args in steps if k == "CMD"))
    for arg in cmd:
        if "/" in arg:
            assert (ROOT / arg).is_file(), arg
    assert cmd[0] == "tools/dist_train.sh" or "tools/dist_train.sh" in cmd


def test_docs_name_existing_configs_and_tools():
    texts = [(ROOT / p).read_text() for p in ("docker/README.md", "docs/coco.md", "README.md")]
    pattern = r"\b((?:configs/coco|tools|docker)/[\w./-]+\.(?:py|sh|md))"
    named = {m[1] for text in texts for m in re.finditer(pattern, text)
             if "mmdet's" not in text[max(0, m.start() - 9):m.start()]}  # mmdet's own tools/train.py
    assert any(n.startswith("configs/coco/") for n in named) and "tools/dist_train.sh" in named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing
    docker_readme = texts[0]
    assert "data/coco" in docker_readme and re.search(r"tools/dist_train\.sh \S+\.py \d", docker_readme)


@pytest.mark.parametrize("script, args, expected_tail", [
    ("dist_train.sh", ["CFG.py", "4", "--amp", "--cfg-options", "a=1"],
     ["train_coco.py", "CFG.py", "--launcher", "pytorch", "--amp", "--cfg-options", "a=1"]),
    ("dist_test.sh", ["CFG.py", "ckpt.pth", "2", "--out", "p.pkl"],
     ["test_coco.py", "CFG.py", "ckpt.pth", "--launcher", "pytorch", "--out", "p.pkl"]),
])
def test_dist_scripts_launch_torchrun(script, args, expected_tail, tmp_path):
    path = ROOT / "tools" / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    stub = tmp_path / "python"  # stands in for the interpreter: prints the arguments it was given
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(stub), "NNODES": "2", "NODE_RANK": "1", "PORT": "29600"}
    out = subprocess.run(["bash", str(path), *args], env=env, capture_output=True, text=True, check=True)
    argv = out.stdout.split("\n")[:-1]
    gpus = args[1] if script == "dist_train.sh" else args[2]
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--master_port=29600", f"--nproc_per_node={gpus}"} <= set(argv)
    assert argv[-len(expected_tail):][0].endswith(f"tools/{expected_tail[0]}")
    assert argv[-len(expected_tail) + 1:] == expected_tail[1:]
    usage = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config .*nope\.py does not exist"):
        cli.train_main([str(tmp_path / "nope.py")])
    with pytest.raises(FileNotFoundError, match=r"--resume: checkpoint .*gone\.pth does not exist"):
        cli.train_main([str(ATTO_LIERA), "--work-dir", str(tmp_path), "--resume", str(tmp_path / "gone.pth")])
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*gone\.pth does not exist"):
        cli.test_main([str(ATTO_LIERA), str(tmp_path / "gone.pth")])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--amp needs a CUDA GPU"):
            cli.train_main([str(ATTO_LIERA), "--work-dir", str(tmp_path), "--amp"])
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--out preds\.json: .* use a \.pkl file name"):
        cli.test_main([str(ATTO_LIERA), str(ckpt), "--out", "preds.json"])
