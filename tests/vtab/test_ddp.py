"""DDP with 2 CPU processes (gloo): a few steps, the same result layout, each test image counted once."""

from __future__ import annotations

import csv
import json
import socket
import sys

import pytest

from .conftest import ROOT, TINY_ARGS, TINY_SIZES, cli_env, run_tool, run_watched
from .test_train_e2e import RECORD_KEYS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_vtab, tmp_path):
    out = tmp_path / "ddp"
    configs = ["--config", "configs/vtab/protocol/vtab1k.yaml", "--config", "configs/vtab/liera_r8.yaml"]
    cmd = [sys.executable, str(ROOT / "tools" / "train_vtab.py"), "fit", *configs, "--data.root", str(tiny_vtab),
           "--data.task", "synth_orientation", "--trainer.default_root_dir", str(out), *TINY_ARGS,
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    proc = run_watched(cmd, timeout=300, env=cli_env(MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stderr and "All distributed processes registered" in proc.stderr
    record = json.loads((out / "result.json").read_text())
    assert set(record) == RECORD_KEYS and record["devices"] == 2
    assert [e for e, _ in record["evaluations"]] == [0, 1]
    # 7 test images over 2 ranks: an unpadded split counts each once (a padded one would count 8), so the DDP
    # accuracy is the one a single process measures on the same weights (last.ckpt holds the final ones)
    assert round(record["acc_final"] * TINY_SIZES["test"], 5).is_integer()
    single = run_tool("train_vtab.py", "test", *configs, "--data.root", tiny_vtab, "--data.task", "synth_orientation",
                      "--trainer.default_root_dir", tmp_path / "single", "--trainer.accelerator", "cpu",
                      "--ckpt_path", out / "checkpoints" / "last.ckpt", *TINY_ARGS, "--trainer.logger", "CSVLogger",
                      "--trainer.logger.save_dir", tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "single" / "lightning_logs" / "version_0" / "metrics.csv").open()))
    assert float(rows[-1]["test/acc"]) == pytest.approx(record["acc_final"], abs=1e-6)
    assert (out / "adapter.safetensors").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "checkpoints", "lightning_logs",
                                                     "result.json"]
