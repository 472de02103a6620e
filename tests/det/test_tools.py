"""Static checks of what cannot run here: the docker image, the torchrun scripts, the paths the docs name."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from liera_vision.det import cli
from tests.tools.packaging_helpers import project_table, read_lock

from .conftest import ATTO_LIERA, ATTO_PLAIN, ROOT, load_config

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


def pyproject_ranges() -> dict[str, Requirement]:
    project = project_table()
    specs = project["dependencies"] + project["optional-dependencies"]["det"] + project["optional-dependencies"]["vtab"]
    return {Requirement(spec).name.lower(): Requirement(spec) for spec in specs}


def test_dockerfile_parses_and_pins_agree_with_the_lock_and_ranges():
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM" and set(keywords) <= {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "VOLUME", "CMD", "ARG"}
    runs = " ".join(args for k, args in steps if k == "RUN")
    lock, ranges = read_lock(), pyproject_ranges()
    for name in DET_PINS:  # the tested versions (requirements/lock.txt), inside pyproject's ranges
        in_docker = re.findall(rf'"{name}==([^"]+)"', runs)
        assert in_docker == [lock[name]], (name, in_docker, lock[name])
        assert ranges[name].specifier.contains(in_docker[0], prereleases=True), (name, str(ranges[name]))
    image_torch = re.match(r"pytorch/pytorch:(\d+\.\d+\.\d+)-", steps[0][1])[1]
    assert ranges["torch"].specifier.contains(image_torch), (image_torch, str(ranges["torch"]))
    docker_setuptools = re.search(r'"setuptools([^"]+)"', runs)[1]
    assert SpecifierSet(docker_setuptools) == ranges["setuptools"].specifier  # < 81: pkg_resources for mmengine
    assert re.search(r'"numpy>=1\.26,<2"', runs) and ranges["numpy"].specifier.contains("1.26.4")
    assert "pip install --no-deps" in runs  # nothing moves the image's torch


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


# --- user errors: one line on stderr, exit status 1, never a traceback ---------------------------------
def _error_line(main, argv) -> str:
    """What ``cli.run`` prints for a user error (``sys.exit(message)``): asserts it is one line."""
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, argv)
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message and ": error: " in message, message
    return message


def _bad_config(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("model = dict(type='MaskRCNN'\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (lambda t: [str(t / "nope.py")], r"error: config .*nope\.py does not exist$"),
    (lambda t: [str(_bad_config(t))], r"error: config .*broken\.py: '\(' was never closed"),
    (lambda t: [str(ATTO_LIERA), "--work-dir", str(t), "--resume", str(t / "gone.pth")],
     r"error: --resume: checkpoint .*gone\.pth does not exist$"),
    (lambda t: [str(ATTO_PLAIN), "--work-dir", str(t), "--cfg-options", "model.backbone.nonexistent=1"],
     r"error: config .*atto_fpn_1x_coco\.py: cannot build the runner: .*unexpected keyword argument 'nonexistent'"),
    (lambda t: [str(ATTO_PLAIN), "--work-dir", str(t), "--cfg-options", "model.backbone.init_cfg.checkpoint=x.pth"],
     r"error: .*LieRAConvNeXt: init_cfg must be None .* got \{'checkpoint': 'x\.pth'\}"),
    (lambda t: [str(ATTO_PLAIN), "--work-dir", str(t), "--cfg-options", "train_dataloader.dataset.pipeline.9.scale=1"],
     r"error: --cfg-options train_dataloader\.dataset\.pipeline\.9\.scale=1: Index 9 exceeds the length of list"),
])
def test_train_user_errors_are_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert re.search(message, _error_line(cli.train_main, argv(tmp_path)))


def test_cfg_options_that_are_not_key_value_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(cli.train_main, [str(ATTO_LIERA), "--cfg-options", "train_cfg.max_epochs"])
    assert exit_.value.code == 2
    assert "error: --cfg-options: 'train_cfg.max_epochs' is not key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run(cli.merge_main, [str(ATTO_LIERA), "a.pth", "b.pth", "--cfg-options", "x=[1,2"])
    assert "error: --cfg-options: cannot parse 'x=[1,2'" in capsys.readouterr().err


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("LIERA_VISION_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match=r"config .*nope\.py does not exist"):
        cli.run(cli.train_main, [str(tmp_path / "nope.py")])


def test_amp_without_gpu_and_out_format(tmp_path):
    if not torch.cuda.is_available():
        assert re.search(r"error: --amp needs a CUDA GPU",
                         _error_line(cli.train_main, [str(ATTO_LIERA), "--work-dir", str(tmp_path), "--amp"]))
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")
    assert re.search(r"error: --out preds\.json: .* use a \.pkl file name$",
                     _error_line(cli.test_main, [str(ATTO_LIERA), str(ckpt), "--out", "preds.json"]))
    assert re.search(r"error: checkpoint .*gone\.pth does not exist$",
                     _error_line(cli.test_main, [str(ATTO_LIERA), str(tmp_path / "gone.pth")]))


def test_test_refuses_a_wrong_or_unreadable_checkpoint(tiny_options, tmp_path):
    """mmengine would only warn and evaluate random weights; the checked runner names the file and config."""
    from mmdet.registry import MODELS

    plain = tmp_path / "plain.pth"
    torch.save({"meta": {}, "state_dict": MODELS.build(load_config(ATTO_PLAIN).model).state_dict()}, plain)
    message = _error_line(cli.test_main, [str(ATTO_LIERA), str(plain), "--work-dir", str(tmp_path / "w"),
                                          "--cfg-options", *tiny_options])
    assert re.search(r"error: .*plain\.pth does not match .*mask-rcnn_liera-r16-convnextv2-atto_fpn_1x_coco\.py: "
                     r"80 missing keys \['backbone\.downsample_layers\.0\.0\.base_layer\.bias', .*32 unexpected keys "
                     r".*\(was it trained with this config\?\)$", message), message
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    message = _error_line(cli.test_main, [str(ATTO_LIERA), str(notes), "--work-dir", str(tmp_path / "w"),
                                          "--cfg-options", *tiny_options])
    # torch >= 2.4 names the refused globals ("cannot load"); older torch's restricted unpickler says "refused"
    assert re.search(r"error: .*notes\.pth: (cannot load this checkpoint \(|refused to unpickle)", message), message


def test_merge_user_errors_are_one_line(tmp_path):
    assert re.search(r"error: config .*nope\.py does not exist$",
                     _error_line(cli.merge_main, [str(tmp_path / "nope.py"), "a.pth", "b.pth"]))
    assert re.search(r"error: checkpoint .*a\.pth does not exist$",
                     _error_line(cli.merge_main, [str(ATTO_LIERA), str(tmp_path / "a.pth"), "b.pth"]))
    from mmdet.registry import MODELS

    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": MODELS.build(load_config(ATTO_PLAIN).model).state_dict()}, plain)
    assert re.search(r"error: .*convnextv2-atto_fpn_1x_coco\.py: model\.backbone is LieRAConvNeXt without adapters",
                     _error_line(cli.merge_main, [str(ATTO_PLAIN), str(plain), str(tmp_path / "m.pth")]))
    blocker = tmp_path / "file"
    blocker.write_text("")
    adapted = tmp_path / "adapted.pth"
    torch.save({"state_dict": MODELS.build(load_config(ATTO_LIERA).model).state_dict()}, adapted)
    message = _error_line(cli.merge_main, [str(ATTO_LIERA), str(adapted), str(blocker / "m.pth")])
    assert re.search(r"error: .*: .*file", message), message


@pytest.mark.slow
@pytest.mark.parametrize("script, args, message", [
    ("train_coco.py", ["{tmp}/nope.py"], r"^train_coco\.py: error: config .*nope\.py does not exist$"),
    ("test_coco.py", [str(ATTO_LIERA), "{tmp}/gone.pth"],
     r"^test_coco\.py: error: checkpoint .*gone\.pth does not exist$"),
    ("merge_backbone.py", [str(ATTO_LIERA), "{tmp}/gone.pth", "{tmp}/out.pth"],
     r"^merge_backbone\.py: error: checkpoint .*gone\.pth does not exist$"),
])
def test_scripts_print_one_line_and_exit_1(script, args, message, tmp_path):
    import os
    import sys

    launcher = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LIERA_VISION_TRACEBACK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    out = subprocess.run([sys.executable, str(ROOT / "tools" / script), *[a.format(tmp=tmp_path) for a in args]],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr
