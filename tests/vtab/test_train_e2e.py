"""tools/train_vtab.py end to end on a generated NOAH folder: fit, test, result file, resumable checkpoint."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from liera_vision.core import read_adapter_file

from .conftest import TINY_ARGS, TINY_SIZES, run_tool

RECORD_KEYS = {"method", "task", "group", "suite", "num_classes", "acc_final", "acc_best", "best_epoch", "evaluations",
               "protocol", "train_split", "eval_split", "arch", "finetune", "adapter", "pretrained", "checkpoint",
               "random_init", "lr", "weight_decay", "batch_size", "image_size", "epochs", "max_epochs",
               "trainable_params", "total_params", "seed", "devices", "precision", "resumed_from", "wall_s",
               "finished", "root"}


@pytest.mark.slow
@pytest.mark.parametrize("config, method", [("liera_r8", "liera-taylor-r8"), ("lora_r8", "lora-r8")])
def test_fit_then_test(config, method, tiny_vtab, tmp_path):
    out = tmp_path / "run"
    fit = run_tool("train_vtab.py", "fit", "--config", f"configs/vtab/{config}.yaml", "--data.root", tiny_vtab,
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

    # the saved checkpoint, tested again in a fresh process, reproduces the final accuracy
    test = run_tool("train_vtab.py", "test", "--config", f"configs/vtab/{config}.yaml", "--data.root", tiny_vtab,
                    "--data.task", "synth_position", "--trainer.default_root_dir", tmp_path / "test",
                    "--ckpt_path", out / "checkpoints" / "last.ckpt", *TINY_ARGS)
    assert test.returncode == 0, test.stderr[-3000:]
    metrics = list(csv.DictReader((tmp_path / "test" / "lightning_logs" / "version_0" / "metrics.csv").open()))
    assert float(metrics[-1]["test/acc"]) == pytest.approx(record["acc_final"], abs=1e-6)
