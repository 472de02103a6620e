"""Writes the legacy fixtures in ``tests/legacy/v0_1_0/`` with the code of liera-vision 0.1.0
(commit b258abe, before the method axes were split). Kept for provenance; it does not run in
the suite. Re-running it needs that commit's package first on ``sys.path``::

    git worktree add /tmp/v010 b258abe
    PYTHONPATH=/tmp/v010 python tests/legacy/make_fixtures.py

The VTAB files (sweep.json, results.jsonl, result.json, lightning_hparams.json: the checkpoint's
hyper-parameters and state-dict keys) come from a 1-epoch 0.1.0 sweep of configs/vtab/liera_r8.yaml
(atto, 32 px) on the synthetic task synth_shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from liera_vision.core import AdapterConfig, apply_adapters, save_adapter

OUT = Path(__file__).resolve().parent / "v0_1_0"


class TinyNet(nn.Module):
    """Stem, depthwise, pointwise conv and a linear head: every layer kind in a few kB."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pw(nn.functional.gelu(self.dw(self.stem(x))))
        return self.head(x.mean((2, 3)))


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


CONFIGS = {
    "liera-taylor": dict(method="liera", rank=2),  # alpha None: alpha = rank in 0.1.0
    "liera-exp": dict(method="liera", composition="exp", rank=2, alpha=8.0),
    "lora": dict(method="lora", rank=2),
    "dora-liera": dict(method="liera", variant="dora", rank=2, alpha=4.0),
    "pissa-liera": dict(method="liera", variant="pissa", rank=2, alpha=4.0),
    "pissa-lora-flat": dict(method="lora", variant="pissa", rank=2, factorization="flat", dropout=0.1),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    stored = {}
    for label, kwargs in CONFIGS.items():
        config = AdapterConfig(targets="all", modules_to_save=["head"], zero_weight_fallback=False, **kwargs)
        model, _ = apply_adapters(tiny_net(), config)
        model.eval()  # 0.1.0 left new adapter layers in training mode (rank dropout on) inside an eval model
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
        save_adapter(model, OUT / f"{label}.adapter")
        with torch.no_grad():
            save_file({"input": x, "output": model(x)}, str(OUT / f"{label}.io"))
        stored[label] = {"to_dict": config.to_dict(), "name": config.name, "scaling": config.scaling}
    (OUT / "configs.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
