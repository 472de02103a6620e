"""Done-when of issue 12 §1 on a real backbone (timm convnextv2_atto): get_peft_model(LieRAConfig), one training
step, save_pretrained, PeftModel.from_pretrained in a fresh process (which first shows that PEFT cannot load the
adapter without `import liera_vision.peft`), and the conversion to a liera-vision adapter file and back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from liera_vision.core import adapter_layers, load_adapter
from liera_vision.models import create_convnextv2
from liera_vision.peft import LieRAConfig, LieRALayer, liera_to_peft, peft_to_liera

ROOT = Path(__file__).resolve().parents[2]


def atto(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = create_convnextv2("atto", num_classes=10)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LieRA-adapted atto after one AdamW step: its base weights, input, outputs and saved PEFT folder."""
    root = tmp_path_factory.mktemp("atto")
    torch.manual_seed(0)
    base = create_convnextv2("atto", num_classes=10)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(base, LieRAConfig(r=4, modules_to_save=["head"]))
    assert sum(isinstance(m, LieRALayer) for m in model.modules()) == 16  # stem, 3 downsamples, 12 depthwise 7x7
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    untrained = model.eval()(x)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert not torch.allclose(out, untrained, atol=1e-4)  # the step changed the model
    model.save_pretrained(root / "peft")
    save_file(state, str(root / "base.safetensors"))
    return {"root": root, "state": state, "x": x, "out": out}


@pytest.mark.slow
def test_atto_reloads_in_a_fresh_process_only_after_importing_liera_vision_peft(trained):
    root = trained["root"]
    save_file({"x": trained["x"]}, str(root / "x.safetensors"))
    script = textwrap.dedent(f"""
        import json, torch, peft
        from safetensors.torch import load_file, save_file
        from liera_vision.models import create_convnextv2
        state, x = load_file({str(root / "base.safetensors")!r}), load_file({str(root / "x.safetensors")!r})["x"]
        def base():
            model = create_convnextv2("atto", num_classes=10)
            model.load_state_dict(state)
            return model.eval()
        report = {{}}
        try:
            peft.PeftModel.from_pretrained(base(), {str(root / "peft")!r})
        except KeyError as err:
            report["without_import"] = repr(err)
        import liera_vision.peft
        model = peft.PeftModel.from_pretrained(base(), {str(root / "peft")!r})
        with torch.no_grad():
            out = model(x)
            plain = model.merge_and_unload()
            merged = plain(x)
        report["types"] = sorted({{type(m).__name__ for m in plain.modules()}})
        save_file({{"out": out, "merged": merged}}, {str(root / "child.safetensors")!r})
        print(json.dumps(report))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["without_import"] == "KeyError('LIERA')"  # PEFT's own lookup, before any of our code runs
    assert "LieRALayer" not in report["types"] and "Conv2d" in report["types"]
    child = load_file(str(root / "child.safetensors"))
    assert torch.allclose(child["out"], trained["out"], atol=1e-5)
    assert torch.allclose(child["merged"], trained["out"], atol=1e-4)


@pytest.mark.slow
def test_atto_adapter_converts_to_a_liera_vision_file_and_back(trained, tmp_path):
    root, x = trained["root"], trained["x"]
    path = peft_to_liera(root / "peft", tmp_path / "atto.safetensors")
    model = atto(trained["state"])
    load_adapter(model, path)
    assert len(adapter_layers(model)) == 16
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), trained["out"], atol=1e-5)
    folder = liera_to_peft(path, tmp_path / "peft")
    original = load_file(str(root / "peft" / "adapter_model.safetensors"))
    again = load_file(str(folder / "adapter_model.safetensors"))
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    reloaded = peft.PeftModel.from_pretrained(atto(trained["state"]), folder)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), trained["out"], atol=1e-5)
