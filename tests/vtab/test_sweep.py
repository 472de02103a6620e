"""The sweep: killed mid-task, it resumes without redoing finished tasks or losing written results; a run folder
holds one resolved configuration (config files and overrides), whatever state its tasks are in."""

from __future__ import annotations

import json
import sys

import pytest

from liera_vision.vtab.results import write_json_atomic
from liera_vision.vtab.sweep import RUN_ONLY, resolve_settings, run_sweep

from .conftest import ROOT, TINY_ARGS, run_tool, run_watched
from .test_train_e2e import tensorboard_scalars

TASKS = "synth_position,synth_orientation"
PROTOCOL = ROOT / "configs" / "vtab" / "protocol" / "vtab1k.yaml"
LIERA_R8 = [PROTOCOL, ROOT / "configs" / "vtab" / "liera_r8.yaml"]
LORA_R8 = [PROTOCOL, ROOT / "configs" / "vtab" / "lora_r8.yaml"]


def sweep_command(run_dir, data, *extra):
    return [sys.executable, str(ROOT / "tools" / "vtab_sweep.py"), "--config", "configs/vtab/protocol/vtab1k.yaml",
            "--config", "configs/vtab/liera_r8.yaml", "--run-dir", str(run_dir), "--suite", "synthetic",
            "--tasks", TASKS, "--", "--data.root", str(data), *TINY_ARGS, "--trainer.max_epochs", "3", *extra]


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

    # the same settings (the callback is one: its marker file keeps it from firing twice)
    second = run_watched(sweep_command(run_dir, tiny_vtab, "--trainer.callbacks", killer), timeout=300)
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
    logs = sorted((run_dir / "synth_orientation" / "lightning_logs").iterdir())  # TensorBoard, one version a run
    scalars = tensorboard_scalars(logs[-1])
    steps = {step for step, _ in scalars["train/loss_epoch"]}
    epochs = {int(value) for step, value in scalars["epoch"] if step in steps}
    assert len(logs) == 2 and epochs == {2}
    assert "| structured | synth_orientation |" in second.stdout  # the sweep ends with its report


def test_recovers_a_finished_task_missing_from_results_and_refuses_another_config(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # the task finished but the sweep died before appending its record
    record = {"method": "run", "task": "dtd", "acc_final": 0.5, "acc_best": 0.6}
    write_json_atomic(run_dir / "dtd" / "result.json", record)
    lines = []
    summary = run_sweep(LIERA_R8, run_dir, ["dtd"], echo=lines.append, in_process=True)
    assert summary.finished == ["dtd"] and summary.ok
    assert json.loads((run_dir / "results.jsonl").read_text()) == record
    summary = run_sweep(LIERA_R8, run_dir, ["dtd"], echo=lines.append, in_process=True)
    assert summary.skipped == ["dtd"]
    with pytest.raises(ValueError, match=r"run was run with other settings \(model.adapter.alpha: \"auto\" -> 8.0; .*"
                                         r"model.adapter.method: \"liera\" -> \"lora\".*use another --run-dir"):
        run_sweep(LORA_R8, run_dir, ["dtd"], echo=lines.append, in_process=True)


def test_a_finished_run_folder_refuses_other_overrides_and_accepts_run_only_ones(tmp_path):
    """The issue's case: alpha 8, then alpha 512 into the same folder, was "finished earlier, skipped"."""
    run_dir = tmp_path / "liera_r8"
    write_json_atomic(run_dir / "dtd" / "result.json", {"method": "liera_r8", "task": "dtd", "acc_final": 0.5,
                                                        "acc_best": 0.5})
    alpha8 = ["--data.root", "data/vtab-1k", "--model.adapter.alpha", "8"]
    assert run_sweep(LIERA_R8, run_dir, ["dtd"], alpha8, echo=print, in_process=True).finished == ["dtd"]
    unfinished = run_dir / "kitti" / "checkpoints" / "last.ckpt"  # a task to resume: refused all the same
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"epoch 3 of kitti")
    with pytest.raises(ValueError, match=r"liera_r8 was run with other settings \(model.adapter.alpha: 8.0 -> 512.0\)"):
        run_sweep(LIERA_R8, run_dir, ["dtd", "kitti"], ["--data.root", "data/vtab-1k", "--model.adapter.alpha", "512"],
                  in_process=True)
    assert unfinished.read_bytes() == b"epoch 3 of kitti" and not (run_dir / "kitti" / "result.json").exists()
    with pytest.raises(ValueError, match=r"\(data.root: \"data/vtab-1k\" -> \"elsewhere\"; "
                                         r"trainer.precision: \"32-true\" -> \"bf16-mixed\"\)"):
        run_sweep(LIERA_R8, run_dir, ["dtd"], ["--data.root", "elsewhere", "--model.adapter.alpha", "8",
                                               "--trainer.precision", "bf16-mixed"], in_process=True)
    # where and how it runs may change: devices, strategy, workers, logging, progress bars
    run_only = [*alpha8, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.num_workers", "3",
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--data.eval_batch_size", "7"]
    assert run_sweep(LIERA_R8, run_dir, ["dtd"], run_only, in_process=True).skipped == ["dtd"]
    recorded = json.loads((run_dir / "sweep.json").read_text())
    assert recorded["settings"]["model.adapter.alpha"] == 8.0 and recorded["run_only"] == list(RUN_ONLY)
    run_only_keys = ("trainer.devices", "data.num_workers", "checkpoint.")
    assert not any(key.startswith(run_only_keys) for key in recorded["settings"])


def test_settings_come_from_lightningcli_in_a_child_process_or_in_this_one():
    extra = ["--model.adapter.rank", "4", "--trainer.devices", "3"]
    child = resolve_settings(LIERA_R8, extra, name="x")
    assert child == resolve_settings(LIERA_R8, extra, name="x", in_process=True)
    assert child["model.adapter.rank"] == 4 and child["run_name"] == "x" and "trainer.devices" not in child
    assert child["seed_everything"] == 0 and child["model.arch"] == "base"  # the protocol file's values


def test_sweep_user_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--data.task after -- is not allowed: the sweep sets it per task: use "
                                         r"--tasks"):
        run_sweep(LIERA_R8, tmp_path / "a", ["dtd"], ["--data.task=dtd"], in_process=True)
    with pytest.raises(ValueError, match=r"do not resolve to a train_vtab.py configuration: Parser key "
                                         r"\"model.adapter\": .*Option 'rnak' is not accepted"):
        run_sweep(LIERA_R8, tmp_path / "b", ["dtd"], ["--model.adapter.rnak", "4"], in_process=True)
    old = tmp_path / "old"
    write_json_atomic(old / "sweep.json", {"config": "configs/vtab/liera_r8.yaml", "config_sha256": "0" * 64,
                                           "name": "old", "config_text": "..."})  # written by 0.1.0
    with pytest.raises(ValueError, match=r"old/sweep.json does not record the resolved settings \(written by an "
                                         r"older liera-vision"):
        run_sweep(LIERA_R8, old, ["dtd"], in_process=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # refused before anything was written


@pytest.mark.slow
def test_sweep_cli_prints_one_line_for_a_user_error(tmp_path):
    proc = run_tool("vtab_sweep.py", "--config", "configs/vtab/protocol/vtab1k.yaml", "--config",
                    "configs/vtab/nope.yaml", "--run-dir", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["vtab_sweep: error: config configs/vtab/nope.yaml does not exist"]


def test_a_failing_task_is_reported_and_the_sweep_goes_on(tiny_vtab, tmp_path):
    lines = []
    extra = ["--data.root", str(tiny_vtab), *TINY_ARGS]  # synth_shape was not generated there
    summary = run_sweep(LORA_R8, tmp_path / "run", ["synth_shape"], extra, echo=lines.append, in_process=True)
    assert summary.failed == {"synth_shape": 1} and not summary.ok
    assert any("synth_shape: FAILED (exit code 1)" in line for line in lines)
    assert not (tmp_path / "run" / "results.jsonl").exists()
