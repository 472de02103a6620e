"""A run stopped after its first epoch and resumed from last.ckpt ends exactly like one that never stopped:
the same adapter weights and the same metrics, under every precision Lightning accepts on the CPU. 16-true
cannot train (AdamW in float16 turns the first step of a zero-gradient factor into NaN): the project says so."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from liera_vision.vtab.cli import main

from .conftest import ROOT, TINY_ARGS
from .killer import Interrupted

# requested -> what Lightning runs on a CPU (it has no float16 autocast there and warns that it uses bfloat16)
PRECISIONS = {"32-true": "32-true", "64-true": "64-true", "16-mixed": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "bf16-true": "bf16-true"}
STOP = json.dumps([{"class_path": "tests.vtab.killer.StopAtEpoch", "init_args": {"epoch": 1}}])


def fit(tiny_vtab, out, precision, *extra) -> list[str]:
    """``train_vtab.py fit`` in this process; the warnings it gave."""
    configs = ROOT / "configs" / "vtab"
    args = ["fit", "--config", configs / "protocol" / "vtab1k.yaml", "--config", configs / "liera_r8.yaml",
            "--data.root", tiny_vtab, "--data.task", "synth_position", "--trainer.default_root_dir", out, *TINY_ARGS,
            "--trainer.accelerator", "cpu", "--trainer.precision", precision, "--trainer.logger", "false", *extra]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([str(a) for a in args])
    return [str(w.message) for w in caught]


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_stopped_and_resumed_equals_uninterrupted(precision, tiny_vtab, tmp_path):
    said = fit(tiny_vtab, tmp_path / "whole", precision)
    if PRECISIONS[precision] != precision:  # Lightning's substitution is said, and recorded
        assert any(f"precision='{precision}'" in m and f"precision='{PRECISIONS[precision]}'" in m for m in said)
    with pytest.raises(Interrupted, match="stopped at the start of epoch 1"):
        fit(tiny_vtab, tmp_path / "parts", precision, "--trainer.callbacks", STOP)
    last = tmp_path / "parts" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0 and not (tmp_path / "parts" / "result.json").exists()
    fit(tiny_vtab, tmp_path / "parts", precision, "--ckpt_path", last)  # the documented resume

    whole, parts = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("whole", "parts"))
    assert parts["resumed_from"] == str(last) and parts["precision"] == whole["precision"] == PRECISIONS[precision]
    for key in ("acc_final", "acc_best", "best_epoch", "evaluations", "epochs"):
        assert parts[key] == whole[key], key
    a, b = (load_file(tmp_path / run / "adapter.safetensors") for run in ("whole", "parts"))
    assert sorted(a) == sorted(b) and len(a) > 30
    assert all(bool(torch.isfinite(t).all()) for t in a.values())
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"{len(changed)} tensors differ, e.g. {changed[:3]}"
    # training moved the factors: the comparison is not between two untouched initialisations
    assert max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k) > 0


def test_16_true_training_is_refused_in_one_line(tiny_vtab, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: trainer.precision='16-true' cannot train here: .* AdamW's eps "
                                         r"\(1e-8\) rounds to 0, .* Train with 16-mixed .*, bf16-mixed or bf16-true"):
        fit(tiny_vtab, tmp_path / "run", "16-true")
    assert not (tmp_path / "run" / "checkpoints").exists()
