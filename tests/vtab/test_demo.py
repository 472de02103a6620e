"""The README's main job, shrunk: real-image tasks, a tiny pre-trained backbone, two methods, two seeds, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liera_vision.vtab.demo import main

from .conftest import ROOT

CONFIGS = ROOT / "configs" / "vtab"
TINY = ["--sizes", "20", "10", "20", "--source-sizes", "52", "26", "26", "--source-epochs", "1", "--epochs", "1",
        "--image-size", "32", "--seeds", "0,1", "--methods", "linear,lora"]


@pytest.mark.slow
def test_demo_runs_reports_and_retrains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = tmp_path / "demo"
    args = [*TINY, "--run-dir", str(run_dir)]
    assert main([*args, "--workers", "2"], configs_dir=CONFIGS) == 0
    out = capsys.readouterr().out
    assert "data: real images from scikit-learn / scikit-image, sk_digits (natural, 10 classes)" in out
    assert "backbone: ConvNeXt-V2 atto pre-trained here on letters" in out
    assert "runs: 2 methods × 2 seeds × 3 tasks = 12 fine-tunings of 1 epochs (2 worker processes)" in out
    lines = out.splitlines()
    assert any(line.startswith("| natural | sk_digits | ") and " ± " in line for line in lines)  # two seeds
    assert any(line.startswith("|  | trainable parameters | 1,284–3,210 | ") for line in lines)
    assert "chance (100 / classes): sk_digits 10.0, sk_texture 16.7, sk_rotation 25.0; mean of the tasks 17.2" in out
    assert "GPU available" not in out and "Tip" not in out  # Lightning's notes go to the log
    for name in ("vtab_report.md", "vtab_report.csv", "vtab_report.png", "demo.log"):
        assert (run_dir / name).is_file()
    record = json.loads((run_dir / "lora-r8" / "seed1" / "sk_texture" / "result.json").read_text())
    assert record["seed"] == 1 and record["checkpoint"].endswith(".safetensors") and not record["random_init"]
    backbone = json.loads(Path(record["checkpoint"]).with_suffix(".json").read_text())
    assert backbone["source"]["task"] == "letters" and backbone["settings"]["epochs"] == 1

    # again: data and backbone from the cache, every run trained anew (in this process this time)
    first = (run_dir / "linear" / "seed0" / "sk_digits" / "result.json").stat().st_mtime_ns
    assert main([*args, "--workers", "1"], configs_dir=CONFIGS) == 0
    out = capsys.readouterr().out
    assert "(cached: " in out and "finished earlier" not in (run_dir / "demo.log").read_text()
    assert (run_dir / "linear" / "seed0" / "sk_digits" / "result.json").stat().st_mtime_ns > first
    # --resume keeps what is there
    assert main([*args, "--workers", "1", "--resume"], configs_dir=CONFIGS) == 0
    assert "lora-r8 / sk_rotation: finished earlier, skipped" in (run_dir / "demo.log").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lora_r9"], "unknown method 'lora_r9': expected one of"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers, got '0,x'"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--image-size", "16"], "--image-size must be >= 32 (ConvNeXt-V2 downsamples 32x), got 16"),
    (["--tasks", "dtd"], "--tasks ['dtd'] are not real-mini tasks"),
    (["--checkpoint", "w.pt", "--random-init"], "--checkpoint and --random-init exclude each other"),
    (["--suite", "vtab-1k"], "--suite other than real-mini needs --data-root"),
])
def test_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        main([*argv, "--run-dir", str(tmp_path)], configs_dir=CONFIGS)
    assert message in capsys.readouterr().err
