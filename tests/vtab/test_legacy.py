"""VTAB files written by liera-vision 0.1.0 (tests/legacy/v0_1_0, commit b258abe) keep working: result files
report, their adapter configs load, a 0.1.0 checkpoint's hyper-parameters and state resume, and a 0.1.0 sweep
folder is refused with the reason instead of being continued under unknown settings."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml

from liera_vision.core import AdapterConfig
from liera_vision.vtab.cli import VTABCLI
from liera_vision.vtab.module import FINGERPRINT_KEY
from liera_vision.vtab.report import report
from liera_vision.vtab.results import read_json
from liera_vision.vtab.sweep import run_sweep

from .conftest import ROOT

LEGACY = ROOT / "tests" / "legacy" / "v0_1_0"
LIERA_R8 = [ROOT / "configs" / "vtab" / "protocol" / "vtab1k.yaml", ROOT / "configs" / "vtab" / "liera_r8.yaml"]


def test_results_report_and_their_adapter_configs_load(tmp_path):
    record = read_json(LEGACY / "result.json")
    config = AdapterConfig.from_dict(record["adapter"])
    assert config.name == "liera-taylor-r8" and config.alpha == 512 and config.rank == 8
    _, tables = report([LEGACY / "results.jsonl", LEGACY / "result.json"], out_dir=tmp_path)
    row = next(r for r in tables[0].rows if r.label == "synth_shape")
    assert tables[0].suite == "synthetic" and row.values == {"liera_r8": pytest.approx(31.25)}


def test_a_checkpoint_of_0_1_0_resumes(tiny_vtab, tmp_path):
    """LightningCLI re-parses a checkpoint's hyper-parameters on --ckpt_path; the core maps 0.1.0 state keys."""
    saved = json.loads((LEGACY / "lightning_hparams.json").read_text())
    hparams = {k: v for k, v in saved["hyper_parameters"].items() if k != "_instantiator"}
    (tmp_path / "hparams.yaml").write_text(yaml.safe_dump({"model": hparams}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        cli = VTABCLI(args=["--config", str(tmp_path / "hparams.yaml"), "--data.root", str(tiny_vtab),
                            "--data.task", "synth_position", "--trainer.default_root_dir", str(tmp_path)], run=False)
    model = cli.model
    assert model.adapter_config == AdapterConfig.from_dict(hparams["adapter"]) and model.method == "liera-taylor-r8"
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    old_keys = set(saved["state_dict_keys"])
    # a 0.1.0 checkpoint: the same tensors under the names of then (one unnamed adapter, no scaling buffer)
    legacy = {k.replace(".default", ""): v for k, v in checkpoint["state_dict"].items() if ".lora_scaling." not in k}
    assert set(legacy) == old_keys
    with torch.no_grad():
        for name, tensor in legacy.items():
            if "lora_" in name:
                tensor.normal_()  # "trained"
    # 0.1.0 stored the same fingerprint (names of the frozen parameters, their sums): it fills them in
    model.on_load_checkpoint({"state_dict": legacy, FINGERPRINT_KEY: checkpoint[FINGERPRINT_KEY]})
    model.load_state_dict(legacy)  # strict
    adapter = model.model.stages[0].blocks[0].conv_dw
    assert torch.equal(adapter.lora_A["default"], legacy["model.stages.0.blocks.0.conv_dw.lora_A"])
    assert float(adapter.lora_scaling["default"]) == 512 / 8


def test_a_sweep_folder_of_0_1_0_is_refused_with_the_reason(tmp_path):
    run_dir = tmp_path / "liera_r8"
    run_dir.mkdir()
    for name in ("sweep.json", "results.jsonl"):
        (run_dir / name).write_bytes((LEGACY / name).read_bytes())
    with pytest.raises(ValueError, match=r"sweep.json does not record the resolved settings \(written by an older "
                                         r"liera-vision, which checked the config file only\).*delete that sweep.json"):
        run_sweep(LIERA_R8, run_dir, ["synth_shape"], in_process=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.jsonl", "sweep.json"]  # untouched
