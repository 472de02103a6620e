"""The sweep: killed mid-task, it resumes without redoing finished tasks or losing written results."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from liera_vision.vtab.results import write_json_atomic
from liera_vision.vtab.sweep import run_sweep

from .conftest import ROOT, TINY_ARGS, run_watched

TASKS = "synth_position,synth_orientation"


def sweep_command(run_dir, data, *extra):
    return [sys.executable, str(ROOT / "tools" / "vtab_sweep.py"), "--config", "configs/vtab/liera_r8.yaml",
            "--run-dir", str(run_dir), "--suite", "synthetic", "--tasks", TASKS, "--",
            "--data.root", str(data), *TINY_ARGS, "--trainer.max_epochs", "3", *extra]


@pytest.mark.slow
def test_killed_sweep_resumes(tiny_vtab, tmp_path):
    run_dir = tmp_path / "liera_r8"
    killer = json.dumps([{"class_path": "tests.vtab.killer.KillAtEpoch",
                          "init_args": {"task": "synth_orientation", "epoch": 2, "marker": str(tmp_path / "killed")}}])
    first = run_watched(sweep_command(run_dir, tiny_vtab, "--trainer.callbacks", killer), timeout=300)
    assert first.returncode == -9, first.stderr[-3000:]  # SIGKILL of the sweep and its task, mid-task
    assert (tmp_path / "killed").is_file()
    results = run_dir / "results.jsonl"
    written = results.read_bytes()
    assert [json.loads(line)["task"] for line in written.splitlines()] == ["synth_position"]
    finished = run_dir / "synth_position" / "result.json"
    finished_stamp = finished.stat().st_mtime_ns
    assert (run_dir / "synth_orientation" / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "synth_orientation" / "result.json").exists()

    second = run_watched(sweep_command(run_dir, tiny_vtab), timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[1/2] liera_r8 / synth_position: finished earlier, skipped" in second.stdout
    assert "[2/2] liera_r8 / synth_orientation: resuming from" in second.stdout
    assert results.read_bytes().startswith(written)  # nothing written before is lost
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["task"] for r in records] == ["synth_position", "synth_orientation"]
    assert finished.stat().st_mtime_ns == finished_stamp  # the finished task was not redone
    resumed = records[1]
    assert resumed["resumed_from"].endswith("synth_orientation/checkpoints/last.ckpt")
    assert [e for e, _ in resumed["evaluations"]] == [0, 1, 2]  # evaluations before the kill are kept
    # the second attempt trained epoch 2 only (epochs 0-1 came from the checkpoint)
    logs = sorted((run_dir / "synth_orientation" / "lightning_logs").iterdir())
    rows = csv.DictReader((logs[-1] / "metrics.csv").open())
    epochs = {int(row["epoch"]) for row in rows if row["train/loss_epoch"]}
    assert len(logs) == 2 and epochs == {2}
    assert "| structured | synth_orientation |" in second.stdout  # the sweep ends with its report


def test_recovers_a_finished_task_missing_from_results_and_refuses_another_config(tmp_path):
    config = ROOT / "configs" / "vtab" / "liera_r8.yaml"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # the task finished but the sweep died before appending its record
    record = {"method": "run", "task": "dtd", "acc_final": 0.5, "acc_best": 0.6}
    write_json_atomic(run_dir / "dtd" / "result.json", record)
    lines = []
    summary = run_sweep(config, run_dir, ["dtd"], echo=lines.append)
    assert summary.finished == ["dtd"] and summary.ok
    assert json.loads((run_dir / "results.jsonl").read_text()) == record
    summary = run_sweep(config, run_dir, ["dtd"], echo=lines.append)
    assert summary.skipped == ["dtd"]
    with pytest.raises(ValueError, match=r"holds a sweep of .*liera_r8.yaml .*lora_r8.yaml .* differs: use another"):
        run_sweep(ROOT / "configs" / "vtab" / "lora_r8.yaml", run_dir, ["dtd"], echo=lines.append)


def test_a_failing_task_is_reported_and_the_sweep_goes_on(tiny_vtab, tmp_path):
    lines = []
    extra = ["--data.root", str(tiny_vtab), *TINY_ARGS]  # synth_shape was not generated there
    summary = run_sweep(ROOT / "configs" / "vtab" / "lora_r8.yaml", tmp_path / "run", ["synth_shape"], extra,
                        echo=lines.append, in_process=True)
    assert summary.failed == {"synth_shape": 1} and not summary.ok
    assert any("synth_shape: FAILED (exit code 1)" in line for line in lines)
    assert not (tmp_path / "run" / "results.jsonl").exists()
