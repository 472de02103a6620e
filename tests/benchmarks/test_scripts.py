"""Each benchmark script runs end to end in a tiny configuration and writes its files.

No timing is asserted (speed is what the scripts measure, on real sizes); what is asserted is
what must hold at any size: every variant is measured, merged outputs equal unmerged ones, LoRA's
update never exceeds its rank bound while LieRA's does.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--arch", "atto", "--size", "32", "--batch", "2", "--rounds", "1", "--warmup", "0"]


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_step_measures_every_variant(tmp_path):
    from benchmarks import train_step

    train_step.main([*TINY, "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in read_csv(tmp_path / "train_step-atto-cpu.csv")}
    assert set(rows) == set(train_step.VARIANTS)
    for name, row in rows.items():
        assert float(row["step_s"]) > 0 and float(row["peak_mb"]) > float(row["static_mb"]) > 0, name
    assert rows["full"]["time_x_full"] == "1.0" and rows["floor"]["mem_x_floor"] == "1.0"
    # the linear probe back-propagates nothing into the backbone; the floor does
    assert float(rows["linear-probe"]["saved_for_backward_mb"]) < float(rows["floor"]["saved_for_backward_mb"])
    assert rows["liera-taylor"]["adapted_layers"] == "16/16" and float(rows["liera-taylor"]["compose_ms"]) > 0
    # PEFT's LoRA refuses the depthwise convs at rank 8, HiRA every grouped conv; the rows say which and why
    assert rows["peft-lora"]["adapted_layers"] == "4/16" and "groups=40" in rows["peft-lora"]["note"]
    assert rows["peft-hira"]["adapted_layers"] == "4/16" and "HiRA does not support Conv2d layers with groups > 1" \
        in rows["peft-hira"]["note"]
    assert rows["peft-lokr"]["adapted_layers"] == rows["peft-loha"]["adapted_layers"] == "16/16"
    assert rows["liera-taylor"]["rank"] == rows["peft-lokr"]["rank"] == "8"
    assert int(rows["liera-taylor"]["adapter_params"]) == int(rows["liera-taylor"]["trainable_params"]) - 32740
    record = json.loads((tmp_path / "train_step-atto-cpu.json").read_text())
    assert len(record["peft"]["peft-lora"]["refused"]) == len(record["peft"]["peft-hira"]["refused"]) == 12
    assert {t["target"] for t in record["targets"]} == {t[0] for t in train_step.TARGETS}
    assert {t["met"] for t in record["targets"]} <= {"yes", "no", "within noise"}
    assert (tmp_path / "train_step-atto-cpu.png").stat().st_size > 10_000


@pytest.mark.slow
def test_train_step_common_layers_at_matched_parameters(tmp_path):
    """--layers common: every adapter on the layers all requested PEFT methods accept (HiRA: no grouped convs),
    PEFT's at the rank that matches LieRA-Taylor's adapter parameters."""
    from benchmarks import train_step

    train_step.main([*TINY, "--layers", "common", "--variants", "full", "floor", "liera-taylor", "lora", "peft-lora",
                     "peft-hira", "peft-lokr", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in read_csv(tmp_path / "train_step-atto-cpu-common.csv")}
    budget = int(rows["liera-taylor"]["adapter_params"])
    assert budget == int(rows["lora"]["adapter_params"]) == 8 * (4 * 172 + 2 * 240 + 2 * 480 + 2 * 960)
    for name in ("liera-taylor", "lora", "peft-lora", "peft-hira", "peft-lokr"):
        assert rows[name]["adapted_layers"] == "4/16" and float(rows[name]["step_s"]) > 0, name
    for name in ("peft-lora", "peft-hira", "peft-lokr"):
        assert abs(int(rows[name]["adapter_params"]) - budget) <= 0.05 * budget, name
        assert f"for liera-taylor's {budget:,}" in rows[name]["note"], name
    assert rows["peft-hira"]["rank"] == rows["peft-lora"]["rank"] == "18"  # r · (C_in·k² + C_out) per layer
    assert "decompose_factor=2" in rows["peft-lokr"]["note"]
    record = json.loads((tmp_path / "train_step-atto-cpu-common.json").read_text())
    assert record["peft"]["common_layers"]["layers"] == ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1",
                                                         "stages.3.downsample.1"]


@pytest.mark.slow
def test_train_step_without_peft_reports_the_skip(tmp_path, monkeypatch):
    """The PEFT-absent path, taken explicitly (None in sys.modules makes `import peft` fail)."""
    from benchmarks import train_step

    monkeypatch.setitem(sys.modules, "peft", None)
    train_step.main([*TINY, "--variants", "full", "floor", "liera-taylor", "peft-lora", "peft-loha", "peft-hira",
                     "peft-lokr", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in read_csv(tmp_path / "train_step-atto-cpu.csv")}
    assert float(rows["liera-taylor"]["step_s"]) > 0
    for name in ("peft-lora", "peft-loha", "peft-hira", "peft-lokr"):
        assert rows[name]["step_s"] == "" and "peft not installed" in rows[name]["note"]


def test_train_step_needs_its_references():
    from benchmarks import train_step

    with pytest.raises(SystemExit):
        train_step.parse_args(["--variants", "full", "lora"])


@pytest.mark.slow
def test_inference_runs_as_a_module(tmp_path):
    command = [sys.executable, "-m", "benchmarks.inference", *TINY, "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    rows = {r["model"]: r for r in read_csv(tmp_path / "inference-atto-cpu.csv")}
    assert set(rows) == {"unadapted", "unadapted-copy", "merged", "unmerged"}
    assert float(rows["merged"]["max_abs_diff_vs_unmerged"]) <= 1e-4
    assert float(rows["unadapted"]["max_abs_diff_vs_unmerged"]) > 1e-3  # the adapters did change the model
    record = json.loads((tmp_path / "inference-atto-cpu.json").read_text())
    assert record["checks"]["merged equals unmerged"]["ok"]
    assert record["environment"]["torch_threads"] == 1


@pytest.mark.slow
def test_rank_capacity_lora_is_bounded_liera_is_not(tmp_path):
    from benchmarks import rank_capacity

    rank_capacity.main(["--size", "32", "--steps", "2", "--train", "16", "--val", "8", "--batch", "4",
                        "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "rank_capacity-atto.csv")
    assert len(rows) == 1 + 3 + 12 + 24  # stem, downsamples, depthwise, pointwise of atto
    for row in rows:
        assert int(row["eff_rank_lora"]) <= int(row["lora_bound"]), row["layer"]
        if int(row["lora_bound"]) < int(row["full_rank"]):
            assert int(row["eff_rank_liera-taylor"]) > int(row["lora_bound"]), row["layer"]
    assert (tmp_path / "rank_capacity-atto.png").stat().st_size > 10_000
