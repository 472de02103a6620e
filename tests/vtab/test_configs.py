"""configs/vtab: one protocol file plus short method files; each composition builds its method and resolves to
exactly what the self-contained file of commit b258abe resolved to."""

from __future__ import annotations

import warnings

import pytest
import yaml

from liera_vision.vtab.cli import VTABCLI, main
from liera_vision.vtab.sweep import resolve_config

from .conftest import ROOT

CONFIG_DIR = ROOT / "configs" / "vtab"
PROTOCOL = CONFIG_DIR / "protocol" / "vtab1k.yaml"
DEMO = CONFIG_DIR / "demo.yaml"  # the demo's scale-down, composed after a method (tests/vtab/test_demo.py)
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p != DEMO)  # the method files
BEFORE = ROOT / "tests" / "vtab" / "fixtures" / "configs_b258abe"  # git show b258abe:configs/vtab/<name>.yaml
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
    assert sorted(p.stem for p in BEFORE.glob("*.yaml")) == sorted(EXPECTED)


def test_method_files_hold_no_protocol_setting():
    """One copy of the protocol: a method file sets model.finetune and model.adapter, nothing else."""
    protocol = yaml.safe_load(PROTOCOL.read_text())
    assert protocol["seed_everything"] == 0 and protocol["model"]["lr"] == 1e-3 and protocol["data"]["batch_size"] == 64
    assert "finetune" not in protocol["model"] and "adapter" not in protocol["model"]
    for config in CONFIGS:
        raw = yaml.safe_load(config.read_text())
        assert list(raw) == ["model"] and sorted(raw["model"]) == ["adapter", "finetune"], config.name
        adapter = raw["model"]["adapter"]
        if adapter is not None:  # LoRA: alpha = rank; Lie updates: alpha / rank = 1 / mean|W| (docs/vtab.md)
            assert adapter["alpha"] == ("auto" if adapter["method"] == "liera" else adapter["rank"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_composition_resolves_like_the_old_file(name):
    before = resolve_config([BEFORE / f"{name}.yaml"], in_process=True)
    after = resolve_config([PROTOCOL, CONFIG_DIR / f"{name}.yaml"], in_process=True)
    if after.get("model.adapter.method") == "liera":  # the one change since: α/r = 64 became the weights' 1/mean|W|
        assert (before["model.adapter.alpha"], after["model.adapter.alpha"]) == (64 * after["model.adapter.rank"],
                                                                                  "auto")
        before["model.adapter.alpha"] = "auto"
    assert after == before
    assert after["seed_everything"] == 0 and after["trainer.precision"] == "32-true"
    assert after["trainer.max_epochs"] == 100 and after["model.lr"] == 1e-3  # protocol values really resolved


def test_later_files_and_flags_override_earlier_ones(tmp_path):
    """The documented order: config files left to right, then flags (whatever their position)."""
    tweak = tmp_path / "tweak.yaml"
    tweak.write_text("model:\n  lr: 3.0e-3\n  adapter:\n    rank: 4\n    alpha: 256\n")
    flat = resolve_config([PROTOCOL, CONFIG_DIR / "liera_r8.yaml", tweak], ["--model.adapter.alpha", "128"],
                          in_process=True)
    assert (flat["model.lr"], flat["model.adapter.rank"], flat["model.adapter.alpha"]) == (3e-3, 4, 128)
    assert flat["model.adapter.composition"] == "taylor" and flat["model.adapter.targets"] == "spatial"
    swapped = resolve_config([CONFIG_DIR / "liera_r8.yaml", PROTOCOL], in_process=True)
    assert swapped["model.adapter.alpha"] == "auto"  # the protocol sets no adapter key: order between them is free


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_method(config, tiny_vtab, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = VTABCLI(args=["--config", str(PROTOCOL), "--config", str(config), "--data.root", str(tiny_vtab),
                            "--data.task", "synth_position", "--model.arch", "atto",
                            "--trainer.default_root_dir", str(tmp_path)], run=False)
    method, trainable = EXPECTED[config.stem]
    assert cli.model.method == method and cli.model.hparams.num_classes == 4  # linked from the task
    if trainable is not None:
        assert cli.model.parameter_count.trainable == trainable
    assert cli.trainer.max_epochs == 100 and cli.datamodule.batch_size == 64 and cli.datamodule.image_size == 224
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_cli_reports_bad_data_in_one_line(tiny_vtab, tmp_path):
    with warnings.catch_warnings(), pytest.raises(SystemExit, match=r"^error: task folder for 'dtd' not found in "):
        warnings.simplefilter("ignore")
        main(["fit", "--config", str(PROTOCOL), "--config", str(CONFIGS[0]), "--data.root", str(tiny_vtab),
              "--data.task", "dtd", "--model.arch", "atto", "--trainer.default_root_dir", str(tmp_path)])
