"""tools/train_vtab.py end to end on a generated NOAH folder: fit, test, result file, resumable checkpoint,
TensorBoard logs by default (CSV on request), user errors in one line."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from liera_vision.core import read_adapter_file

from .conftest import TINY_ARGS, TINY_SIZES, run_tool

CONFIGS = ("--config", "configs/vtab/protocol/vtab1k.yaml", "--config")


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in ``log_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

RECORD_KEYS = {"method", "task", "group", "suite", "num_classes", "acc_final", "acc_best", "best_epoch", "evaluations",
               "protocol", "train_split", "eval_split", "arch", "finetune", "adapter", "pretrained", "checkpoint",
               "random_init", "lr", "weight_decay", "batch_size", "image_size", "epochs", "max_epochs",
               "trainable_params", "total_params", "seed", "devices", "precision", "resumed_from", "wall_s",
               "finished", "root"}


@pytest.mark.slow
@pytest.mark.parametrize("config, method", [("liera_r8", "liera-taylor-r8"), ("lora_r8", "lora-r8")])
def test_fit_then_test(config, method, tiny_vtab, tmp_path):
    out = tmp_path / "run"
    fit = run_tool("train_vtab.py", "fit", *CONFIGS, f"configs/vtab/{config}.yaml", "--data.root", tiny_vtab,
                   "--data.task", "synth_position", "--trainer.default_root_dir", out, *TINY_ARGS)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "RANDOM-INITIALISED" in fit.stderr  # said plainly
    record = json.loads((out / "result.json").read_text())
    assert set(record) == RECORD_KEYS
    assert record["method"] == method and record["task"] == "synth_position" and record["eval_split"] == "test"
    assert [e for e, _ in record["evaluations"]] == [0, 1] and record["epochs"] == 2
    assert record["acc_best"] >= record["acc_final"] and record["acc_best"] >= max(a for _, a in record["evaluations"])
    assert round(record["acc_final"] * TINY_SIZES["test"], 5).is_integer()
    assert record["trainable_params"] == 758_368 + 640 + 1284 and record["random_init"] is True
    config_file, tensors = read_adapter_file(out / "adapter.safetensors")
    assert config_file.name == method and "head.fc.weight" in tensors
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.endswith("base_layer.weight") for k in ckpt["state_dict"])  # trainable state only
    assert ckpt["epoch"] == 1 and len(ckpt["eval_history"]) == 2
    # TensorBoard by default, beside the run's other files
    logs = out / "lightning_logs" / "version_0"
    assert list(logs.glob("events.out.tfevents.*")) and not (logs / "metrics.csv").exists()
    scalars = tensorboard_scalars(logs)
    assert [v for _, v in scalars["val/acc"]] == pytest.approx([a for _, a in record["evaluations"]])
    assert scalars["test/acc"][-1][1] == pytest.approx(record["acc_final"])
    assert scalars["trainable_params"] == [(0, record["trainable_params"])]

    # the saved checkpoint, tested again in a fresh process, reproduces the final accuracy
    test = run_tool("train_vtab.py", "test", *CONFIGS, f"configs/vtab/{config}.yaml", "--data.root", tiny_vtab,
                    "--data.task", "synth_position", "--trainer.default_root_dir", tmp_path / "test",
                    "--ckpt_path", out / "checkpoints" / "last.ckpt", *TINY_ARGS,
                    "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", tmp_path / "test")  # CSV on request
    assert test.returncode == 0, test.stderr[-3000:]
    metrics = list(csv.DictReader((tmp_path / "test" / "lightning_logs" / "version_0" / "metrics.csv").open()))
    assert float(metrics[-1]["test/acc"]) == pytest.approx(record["acc_final"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--data.task", "dtd"], r"error: task folder for 'dtd' not found in .*; folders present: \["),
    (["--data.task", "dtd", "--data.num_classes", "10"],
     r"error: num_classes=10 contradicts the registry: 'dtd' has 47 classes"),
    (["--data.task", "synth_position", "--trainer.max_epohcs", "3"],
     r"error: unrecognized arguments: --trainer.max_epohcs 3 \(the options: train_vtab.py <subcommand> --help\)"),
    (["--data.task", "synth_position", "--ckpt_path", "nowhere.ckpt"], r"error: .*nowhere.ckpt"),
])
def test_user_errors_are_one_line(args, message, tiny_vtab, tmp_path):
    proc = run_tool("train_vtab.py", "fit", *CONFIGS, "configs/vtab/lora_r8.yaml", "--data.root", tiny_vtab,
                    "--trainer.default_root_dir", tmp_path, *TINY_ARGS, *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(message + ".*", last), last
