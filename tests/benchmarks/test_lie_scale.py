"""The scale study's verdict: grid steps, the best point, the automatic rules resolved per run.

The study itself (two pre-trainings and a grid of a few hundred runs) is a benchmark, not a test; what is
tested here is the arithmetic its table rests on, and that a run at ``alpha="auto"`` records the α/r it got.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from benchmarks import lie_scale as ls
from benchmarks import transfer_study as ts
from liera_vision.vtab import VTABClassifier


def test_grid_steps_count_ratios_of_a_geometric_grid():
    grid = [8.0, 16.0, 32.0, 64.0, 128.0]
    assert ls.grid_steps(64, 16, grid) == pytest.approx(2.0)
    assert ls.grid_steps(45.25, 32, grid) == pytest.approx(0.5, abs=1e-3)
    assert ls.grid_steps(10, 10, [1.0, 10.0]) == 0.0 and ls.grid_steps(1, 10, [1.0, 10.0]) == pytest.approx(1.0)


def test_verdict_takes_the_best_grid_point_and_places_auto_and_the_fixed_value():
    args = SimpleNamespace(lrs=[1e-3], lie_scalings=[16.0, 32.0, 64.0, 128.0], lora_scalings=[1.0])
    vals = {("liera-taylor", 1e-3, 16.0): 50.0, ("liera-taylor", 1e-3, 32.0): 60.0, ("liera-taylor", 1e-3, 64.0): 70.0,
            ("liera-taylor", 1e-3, 128.0): 70.0, ("liera-taylor", 1e-3, "auto"): 69.0,
            ("liera-taylor", 1e-3, "auto-kind"): 68.0, ("lora", 1e-3, 1.0): 65.0}
    resolved = {"auto": {"all": 90.5}, "auto-kind": {"all": 80.0}}
    [row] = ls.verdict_rows(1e-4, 1 / 90.5, vals, resolved, args)
    assert row["best"] == "64" and row["best_val"] == "70.0"  # ties: the smaller α/r
    assert row["auto"] == "90" and row["auto_steps"] == f"{math.log2(90.5 / 64):.1f}"
    assert row["fixed_steps"] == "0.0" and row["fixed_val"] == "70.0" and row["lora_val"] == "65.0"
    assert row["lora_best"] == "1" and row["relative"] == f"{64 / 90.5:.2g}"  # the Lie optimum in LoRA's units
    assert (row["auto_val"], row["kind_val"]) == ("69.0", "68.0")


def test_val_means_need_every_task_and_seed():
    records = [{"method": "lora", "lr": 1e-3, "scaling": 1.0, "task": t, "seed": s, "acc_final": a}
               for t, s, a in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.6), ("b", 1, 0.8))]
    assert ls.val_means(records, ["a", "b"], [0, 1]) == {("lora", 1e-3, 1.0): pytest.approx(65.0)}
    assert ls.val_means(records[:3], ["a", "b"], [0, 1]) == {}


@pytest.mark.filterwarnings("ignore:.*RANDOM-INITIALISED")
def test_a_run_records_the_scale_each_rule_resolved():
    for rule in ("auto", "auto-kind"):
        model = VTABClassifier(arch="atto", num_classes=4, **ts.model_kwargs("liera-taylor", 8, rule))
        resolved = ts._resolved_scalings(model)
        assert set(resolved) == {"Conv2d 4x4/s4", "Conv2d 2x2/s2", "Conv2d 7x7/s1 dw"}
        per_layer = {layer.kind: layer.scaling for layer in model.report.layers}
        assert resolved == pytest.approx(per_layer)
        assert all(40 < v < 90 for v in resolved.values())  # 1 / mean|W| of timm's init (std 0.02 truncated)
    assert ts.scaling_text("auto-kind") == "α/r auto-kind" and ts.scaling_text(8.0) == "α/r 8"
    assert not ts.scaling_text(None)
    assert ts.model_kwargs("lora", 8, 0.5)["adapter"].alpha == 4.0
