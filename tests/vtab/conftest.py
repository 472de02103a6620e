"""VTAB fixtures: a tiny NOAH-format folder (generated, 32 px, a handful of images) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from liera_vision.vtab import synthetic

ROOT = Path(__file__).resolve().parents[2]
TINY_SIZES = {"train800": 8, "val200": 4, "test": 7}  # odd test size: DDP must count each image once
TINY_TASKS = ["synth_position", "synth_orientation"]
# the overrides that shrink any configs/vtab config to seconds on CPU
TINY_ARGS = ["--model.arch", "atto", "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
             "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", "--model.warmup_epochs", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="session")
def tiny_vtab(tmp_path_factory) -> Path:
    """Two synthetic tasks in NOAH layout: 8 train800, 4 val200, 12 train800val200 and 7 test images of 32 px."""
    return synthetic.generate(tmp_path_factory.mktemp("vtab"), TINY_TASKS, image_size=32, sizes=TINY_SIZES)


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_tool(script: str, *args, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` with this interpreter; output captured, a hang fails instead of blocking CI."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, **popen)
