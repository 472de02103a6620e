"""Every configs/vtab YAML parses, builds its method and shows lr and alpha explicitly."""

from __future__ import annotations

import warnings

import pytest
import yaml

from liera_vision.vtab.cli import VTABCLI, main

from .conftest import ROOT

CONFIGS = sorted((ROOT / "configs" / "vtab").glob("*.yaml"))
EXPECTED = {  # config -> (method label, trainable params of atto with a 4-class head)
    "liera_r8": ("liera-taylor-r8", 758_368 + 320 * 2 + 320 * 4 + 4),
    "liera_r16": ("liera-taylor-r16", 2 * 758_368 + 320 * 2 + 320 * 4 + 4),
    "liera_exp_r16": ("liera-exp-r16", 2 * 758_368 + 320 * 2 + 320 * 4 + 4),
    "lora_r8": ("lora-r8", 758_368 + 320 * 2 + 320 * 4 + 4),
    "lora_r16": ("lora-r16", 2 * 758_368 + 320 * 2 + 320 * 4 + 4),
    "dora_liera_r16": ("dora+liera-taylor-r16", None),
    "pissa_liera_r16": ("pissa+liera-taylor-r16", 2 * 758_368 + 320 * 2 + 320 * 4 + 4),
    "full_finetune": ("full", None),
    "linear_probe": ("linear", 320 * 4 + 4),
}


def test_the_issue_lists_every_config():
    assert sorted(p.stem for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_method(config, tiny_vtab, tmp_path):
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["lr"] == 1e-3 and "adapter" in raw["model"]  # explicit knobs, protocol lr
    adapter = raw["model"]["adapter"]
    if adapter is not None:  # LoRA: alpha = rank; Lie updates: alpha / rank = 64 ≈ 1 / mean|W| (docs/vtab.md)
        assert adapter["alpha"] == adapter["rank"] * (64 if adapter["method"] == "liera" else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = VTABCLI(args=["--config", str(config), "--data.root", str(tiny_vtab), "--data.task", "synth_position",
                            "--model.arch", "atto", "--trainer.default_root_dir", str(tmp_path)], run=False)
    method, trainable = EXPECTED[config.stem]
    assert cli.model.method == method and cli.model.hparams.num_classes == 4  # linked from the task
    if trainable is not None:
        assert cli.model.parameter_count.trainable == trainable
    assert cli.trainer.max_epochs == 100 and cli.datamodule.batch_size == 64 and cli.datamodule.image_size == 224
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_cli_reports_bad_data_in_one_line(tiny_vtab, tmp_path):
    with warnings.catch_warnings(), pytest.raises(SystemExit, match=r"^error: task folder for 'dtd' not found in "):
        warnings.simplefilter("ignore")
        main(["fit", "--config", str(CONFIGS[0]), "--data.root", str(tiny_vtab), "--data.task", "dtd",
              "--model.arch", "atto", "--trainer.default_root_dir", str(tmp_path)])
