"""The README's main job, shrunk: generated data, one method, one task, the report."""

from __future__ import annotations

import pytest

from liera_vision.vtab.demo import main

from .conftest import ROOT


@pytest.mark.slow
def test_demo_runs_and_reruns_from_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["--tasks", "synth_position", "--methods", "lora_r8", "--epochs", "1", "--image-size", "32",
            "--run-dir", str(tmp_path / "demo")]
    assert main(args, configs_dir=ROOT / "configs" / "vtab") == 0
    out = capsys.readouterr().out
    assert "RANDOM-INITIALISED (no --checkpoint)" in out and "--data-root <NOAH vtab-1k folder>" in out
    assert "| structured | synth_position | " in out and "mean of the 4 tasks" in out
    assert list((tmp_path / "cache" / "liera-vision" / "vtab-synthetic").glob("*/synth_position/.complete"))
    for name in ("vtab_report.md", "vtab_report.csv", "vtab_report.png", "lora_r8/results.jsonl"):
        assert (tmp_path / "demo" / name).is_file()

    assert main(args, configs_dir=ROOT / "configs" / "vtab") == 0  # everything cached: nothing retrains
    assert "lora_r8 / synth_position: finished earlier, skipped" in capsys.readouterr().out


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--methods", "lora_r9", "--run-dir", str(tmp_path)], configs_dir=ROOT / "configs" / "vtab")
    err = capsys.readouterr().err
    assert "no config" in err and "lora_r9.yaml" in err and "'lora_r8'" in err
