"""DDP with 2 CPU processes (gloo): a few steps, the same result layout, each test image counted once."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from .conftest import ROOT, TINY_ARGS, TINY_SIZES, cli_env, run_watched
from .test_train_e2e import RECORD_KEYS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_vtab, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "tools" / "train_vtab.py"), "fit", "--config", "configs/vtab/liera_r8.yaml",
           "--data.root", str(tiny_vtab), "--data.task", "synth_orientation", "--trainer.default_root_dir", str(out),
           *TINY_ARGS, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    proc = run_watched(cmd, timeout=300, env=cli_env(MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stderr and "All distributed processes registered" in proc.stderr
    record = json.loads((out / "result.json").read_text())
    assert set(record) == RECORD_KEYS and record["devices"] == 2
    assert [e for e, _ in record["evaluations"]] == [0, 1]
    # 7 test images over 2 ranks: an unpadded split counts each once (a padded one would count 8)
    assert round(record["acc_final"] * TINY_SIZES["test"], 5).is_integer()
    assert (out / "adapter.safetensors").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "checkpoints", "lightning_logs",
                                                     "result.json"]
