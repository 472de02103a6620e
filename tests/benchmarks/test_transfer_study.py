"""The transfer study: its generated tasks, its choice rule, and the whole script in a tiny configuration.

No accuracy or timing is asserted (a few images and epochs say nothing about the methods); what is
asserted is the protocol: every method gets the same grid, settings are chosen on val200 only, finals
run at the chosen settings on train800val200 -> test, results resume, parameter counts are right.
"""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import transfer_study as ts
from liera_vision.core import AdapterConfig, apply_adapters
from liera_vision.models import create_convnextv2
from liera_vision.vtab import synthetic
from liera_vision.vtab.data import read_split


def test_generated_tasks_are_noah_folders_with_balanced_deterministic_labels(tmp_path):
    sizes = {"train800": 8, "val200": 4, "test": 8}
    ts.write_targets(tmp_path, ["synth_texture"], sizes, 32)
    folder = tmp_path / "synth_texture"
    train, val = read_split(folder, "train800", 4), read_split(folder, "val200", 4)
    union = read_split(folder, "train800val200", 4)
    assert [(p.read_bytes(), label) for p, label in union] == [(p.read_bytes(), label) for p, label in train + val]
    assert sorted(label for _, label in train) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {p.suffix for p, _ in union} == {".png"}
    ts.write_targets(tmp_path / "again", ["synth_texture"], sizes, 32)
    assert (folder / "train800.txt").read_text() == (tmp_path / "again" / "synth_texture" / "train800.txt").read_text()
    with pytest.raises(ValueError, match="synth_texture was generated with other parameters"):
        ts.write_targets(tmp_path, ["synth_texture"], {**sizes, "test": 9}, 32)
    rng = np.random.default_rng(0)
    for label in range(10):  # every source class draws something on the background
        assert np.asarray(synthetic.draw_source(label, 32, rng)).std() > 10
    assert [ts.num_classes(t) for t in ("synth_texture", "sk_digits", "sk_texture")] == [4, 10, 6]


def test_choice_is_the_best_mean_validation_accuracy_ties_to_the_smaller_setting():
    def run(method, lr, scaling, task, acc):
        return {"method": method, "lr": lr, "scaling": scaling, "task": task, "acc_final": acc}

    tune = [run("lora", 1e-3, 1, "a", 0.5), run("lora", 1e-3, 1, "b", 0.7),    # mean 0.6
            run("lora", 1e-2, 1, "a", 0.9), run("lora", 1e-2, 1, "b", 0.3),    # mean 0.6: tie, larger lr
            run("lora", 1e-3, 8, "a", 0.6), run("lora", 1e-3, 8, "b", 0.6),    # mean 0.6: tie, larger scaling
            run("full", 1e-3, None, "a", 0.2), run("full", 1e-3, None, "b", 0.4),
            run("full", 3e-3, None, "a", 0.5), run("full", 3e-3, None, "b", 0.4)]
    chosen, rows = ts.choose(tune, ["lora", "full"], ["a", "b"])
    assert chosen["lora"] == {"lr": 1e-3, "scaling": 1, "val_acc": pytest.approx(0.6)}
    assert chosen["full"] == {"lr": 3e-3, "scaling": None, "val_acc": pytest.approx(0.45)}
    assert sum(r["chosen"] for r in rows) == 2 and len(rows) == 5
    with pytest.raises(SystemExit, match="no complete tuning results for full"):
        ts.choose(tune, ["full"], ["a", "b", "c"])  # no setting has a result on task c


def test_weight_stats_of_a_random_init_match_timms_init():
    """timm's ConvNeXt init is trunc_normal(std=0.02): E|W| = 0.02 * sqrt(2 / pi) = 0.01596 (truncation aside)."""
    rows = {r["kind"]: r for r in ts.weight_stats(create_convnextv2("atto", 4))}
    # the core's layer kinds: the 4x4 stem, three 2x2 downsamples, twelve depthwise 7x7 convs
    assert sorted(r["layers"] for r in rows.values()) == [1, 3, 12, 16] and len(rows) == 4
    assert rows["all adapted"]["layers"] == 16
    assert rows["all adapted"]["mean_abs"] == pytest.approx(0.02 * (2 / np.pi) ** 0.5, rel=0.03)


def test_weight_stats_command_reads_a_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_convnextv2("atto", 10)
    with torch.no_grad():
        model.stem[0].weight.mul_(10)  # 1,920 of the 360,880 adapted entries
    save_file(model.state_dict(), str(tmp_path / "atto.safetensors"))
    assert ts.main(["--weight-stats", str(tmp_path / "atto.safetensors"), "--arch", "atto"]) == []
    out = capsys.readouterr().out
    assert "4x4" in out and "7x7" in out and "all adapted" in out
    stem = next(line for line in out.splitlines() if "4x4" in line)
    mean_abs = float(stem.split("│")[4])
    assert 0.14 < mean_abs < 0.18  # ten times timm's 0.016 (trunc. normal, std 0.02)


def test_lie_training_ignores_the_scale_of_normalised_weights_lora_does_not():
    """Why the Lie scaling is tied to |W|: stem and depthwise convs feed a LayerNorm, so W -> 4W keeps the function.

    A Lie update is relative (W' = W + W * dW): its gradients and Adam steps are the same on W and 4W, so
    training follows the same path. LoRA's additive step is absolute, i.e. 4x smaller relative to 4W.
    """
    torch.manual_seed(0)
    base = create_convnextv2("atto", 4)
    scaled = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in scaled.named_modules():
            if isinstance(module, torch.nn.Conv2d) and (name == "stem.0" or module.groups > 1):
                module.weight.mul_(4)
                module.bias.mul_(4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    gap = {}
    for method in ("liera", "lora"):
        logits = []
        for model in (base, scaled):
            torch.manual_seed(1)
            config = AdapterConfig(method=method, rank=4, alpha=256, targets=["stem.0", "conv_dw"])
            adapted, _ = apply_adapters(copy.deepcopy(model), config)
            optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-3)
            for _ in range(3):
                loss = F.cross_entropy(adapted(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                logits.append(adapted(x))
        gap[method] = (logits[0] - logits[1]).abs().max().item()
    # what is left for LieRA is LayerNorm's eps (1e-6 on the variance), which the rescaling does not scale
    assert gap["liera"] < 0.01 and gap["lora"] > 50 * gap["liera"], gap


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_the_study_runs_chooses_on_val_and_resumes(tmp_path, capsys):
    tiny = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--sizes", "8", "4", "8",
            "--source-sizes", "20", "10", "10", "--source-epochs", "1", "--epochs", "1", "--batch-size", "8",
            "--lrs", "1e-3", "1e-2", "--scalings", "1", "64", "--methods", "linear", "lora", "liera-taylor",
            "--tasks", "synth_shape", "synth_position", "--seeds", "0", "1", "--workers", "2"]
    summary = ts.main(tiny)
    runs = [json.loads(line) for line in (tmp_path / "out" / ts.RUNS_FILE).read_text().splitlines()]
    tune = [r for r in runs if r["phase"] == "tune"]
    final = [r for r in runs if r["phase"] == "final"]
    assert len(tune) == (2 + 4 + 4) * 2 and {r["eval_split"] for r in tune} == {"val200"}
    assert len(final) == 3 * 2 * 2 and {r["eval_split"] for r in final} == {"test"}
    grid = read_csv(tmp_path / "out" / "transfer_study-grid.csv")
    for row in summary:  # the finals ran at the setting with the best mean validation accuracy
        points = [g for g in grid if g["method"] == row["method"]]
        best = max(float(g["val_mean"]) for g in points)
        chosen = [g for g in points if g["chosen"] == "True"]
        assert len(chosen) == 1 and float(chosen[0]["val_mean"]) == best
        assert {(r["lr"], r["scaling"]) for r in final if r["method"] == row["method"]} == {(row["lr"], row["scaling"])}
    params = {row["method"]: row["trainable_params"] for row in summary}
    head = 320 * 2 + 320 * 4 + 4  # head.norm + a 4-class head.fc
    assert params == {"linear": 320 * 4 + 4, "lora": 758_368 + head, "liera-taylor": 758_368 + head}
    assert all(r["rel_update"] is None for r in final if r["method"] == "linear")
    assert all(r["rel_update"]["all"] > 0 for r in final if r["method"] != "linear")
    rows = read_csv(tmp_path / "out" / "transfer_study.csv")
    assert len(rows) == 3 * 3 and {r["task"] for r in rows} == {"synth_shape", "synth_position", "mean"}
    assert (tmp_path / "out" / "transfer_study.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "transfer_study.json").read_text())["chosen"].keys() == params.keys()
    backbone = list((tmp_path / "cache").glob("*/synth_source-convnextv2_atto-*.safetensors"))
    assert len(backbone) == 1 and json.loads(backbone[0].with_suffix(".json").read_text())["settings"]["epochs"] == 1

    # resume: a lost final run is redone, nothing else; the source model comes from the cache
    lines = (tmp_path / "out" / ts.RUNS_FILE).read_text().splitlines()
    (tmp_path / "out" / ts.RUNS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    ts.main([*tiny, "--workers", "1"])
    out = capsys.readouterr().out
    assert "source model (cached)" in out and "20 finished earlier" in out and "11 finished earlier" in out
    assert len((tmp_path / "out" / ts.RUNS_FILE).read_text().splitlines()) == len(lines)
    with pytest.raises(SystemExit, match="another study setting"):
        ts.main([*tiny, "--epochs", "2"])


@pytest.mark.slow
def test_peft_methods_beside_ours_on_common_layers_at_matched_parameters(tmp_path):
    """--layers common: PEFT's HiRA refuses depthwise convs, so everyone trains the stem and the downsamples;
    HiRA (no alpha) is tuned over lr x alpha/r, LoKr over lr and alpha/r; PEFT's W' comes from its own merge."""
    pytest.importorskip("peft")
    tiny = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--sizes", "8", "4", "8",
            "--source-sizes", "20", "10", "10", "--source-epochs", "1", "--epochs", "1", "--batch-size", "8",
            "--lrs", "1e-3", "--scalings", "1", "8", "--methods", "liera-taylor", "peft-hira", "peft-lokr",
            "--layers", "common", "--tasks", "synth_shape", "--seeds", "0", "--workers", "1"]
    summary = {row["method"]: row for row in ts.main(tiny)}
    runs = [json.loads(line) for line in (tmp_path / "out" / ts.RUNS_FILE).read_text().splitlines()]
    tune = {(r["method"], r["lr"], r["scaling"]) for r in runs if r["phase"] == "tune"}
    assert tune == {("liera-taylor", 1e-3, 1), ("liera-taylor", 1e-3, 8), ("peft-lokr", 1e-3, 1),
                    ("peft-lokr", 1e-3, 8), ("peft-hira", 1e-3, None), ("peft-hira", 8e-3, None)}
    record = json.loads((tmp_path / "out" / "transfer_study.json").read_text())
    assert record["peft"]["common_layers"]["layers"] == ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1",
                                                         "stages.3.downsample.1"]
    budget = 8 * (4 * 172 + 2 * 240 + 2 * 480 + 2 * 960)  # LieRA-Taylor r8 on those four layers
    assert record["peft"]["common_layers"]["liera_taylor_adapter_params"] == budget
    head = 320 * 2 + 320 * 4 + 4
    assert summary["liera-taylor"]["trainable_params"] == budget + head
    assert abs(summary["peft-hira"]["trainable_params"] - head - budget) <= 0.05 * budget
    assert {r["rank"] for r in runs if r["method"] == "peft-hira"} == {18}  # r · (C_in·k² + C_out) per layer
    final = [r for r in runs if r["phase"] == "final"]
    assert len(final) == 3 and all(r["rel_update"]["all"] > 0 for r in final)
    assert all(set(r["rel_update"]) == {"Conv2d 4x4/s4", "Conv2d 2x2/s2", "all"} for r in final), final[0]["rel_update"]
    with pytest.raises(SystemExit, match="another study setting"):  # other layers: another study
        ts.main([*tiny[:-8], "--tasks", "synth_shape", "--seeds", "0", "--workers", "1"])
