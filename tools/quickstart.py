#!/usr/bin/env python
"""A two-minute tour of the core API on generated data (no downloads).

Adapts a ConvNeXt-V2 atto with LieRA (rank 8, Taylor composition), trains the adapters and the
head on a generated 4-class task, then merges the adapters into plain weights and saves the
adapter file. The backbone is random-initialised: pass ``--checkpoint`` to start from real
ConvNeXt-V2 weights (official, FCMAE or timm files).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track

from liera_vision.core import AdapterConfig, apply_adapters, count_parameters, merge_and_unload, save_adapter
from liera_vision.models import create_convnextv2


def quadrant_task(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright square; the label is the quadrant holding it."""
    x = torch.randn(n, 3, size, size, generator=generator) * 0.5
    y = torch.randint(0, 4, (n,), generator=generator)
    half, side = size // 2, size // 4
    for i, label in enumerate(y.tolist()):
        r0 = (label // 2) * half + int(torch.randint(0, half - side, (1,), generator=generator))
        c0 = (label % 2) * half + int(torch.randint(0, half - side, (1,), generator=generator))
        x[i, :, r0:r0 + side, c0:c0 + side] += 2.0
    return x, y


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="ConvNeXt-V2 atto weights (official / FCMAE / timm file)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "liera-quickstart")
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = quadrant_task(512, args.size, g)
    x_test, y_test = quadrant_task(256, args.size, g)

    model = create_convnextv2("atto", num_classes=4, checkpoint=args.checkpoint)
    if args.checkpoint is None:
        console.print("[yellow]No --checkpoint given: the ConvNeXt-V2 atto backbone is random-initialised.[/]")
    config = AdapterConfig(method="liera", rank=8, modules_to_save=["head"])
    model, report = apply_adapters(model, config)
    console.print(str(report), highlight=False)
    console.print(f"trainable parameters: {count_parameters(model).trainable:,}")

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    console.print(f"test accuracy before training: {accuracy(model, x_test, y_test):.3f}")
    model.train()
    for _step in track(range(args.steps), description="training LieRA adapters"):
        idx = torch.randint(0, len(x_train), (64,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapted_acc = accuracy(model, x_test, y_test)
    console.print(f"test accuracy after {args.steps} steps: {adapted_acc:.3f} (chance 0.25)")

    path = save_adapter(model, args.out / "adapter.safetensors")
    with torch.no_grad():
        before = model(x_test[:8])
    merged = merge_and_unload(model)
    with torch.no_grad():
        gap = (merged(x_test[:8]) - before).abs().max().item()
    console.print(f"adapter saved to {path} ({path.stat().st_size / 1024:.0f} KiB); "
                  f"merged model max |Δlogit| = {gap:.2e}")


if __name__ == "__main__":
    main()
