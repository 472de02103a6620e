"""Rank capacity after training: the effective rank of the learned update per adapted layer, LoRA vs LieRA.

    python -m benchmarks.rank_capacity                        # atto, 64², 4-class gratings, CPU, ~2 min
    python -m benchmarks.rank_capacity --targets spatial      # the paper's layers only
    python -m benchmarks.rank_capacity --checkpoint model.safetensors   # from trained weights

Each method trains the same adapters (same rank, same layers, same batches; the classifier head
trains in full) on a generated task: gratings whose orientation is the class. Then, per adapted
layer, the learned update ``U = W' − W`` is computed in float64 (so LoRA's exact low rank is not
blurred by fp32 rounding of ``W + ΔW − W``) and viewed as the factorization's ``rows × cols``
matrix, the view in which ``rank(BA) ≤ inner`` holds. The effective rank counts the singular
values above ``--threshold`` × the largest one.

With the ``kernel`` factorization ``inner = rank · kh``, so LoRA's bound ``min(inner, rows, cols)``
already equals the full rank for the 7×7 depthwise convs (rows = 7) and the stem (cols = 3·4):
the rank gain of the Lie update shows on the downsample and pointwise layers.
Writes ``<out>/rank_capacity-<arch>.{csv,png,json}``.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import nn

from benchmarks.common import (
    ADAPTER_METHODS,
    RESULTS,
    configure,
    console,
    environment,
    markdown_table,
    print_table,
    save_figure,
    write_csv,
    write_json,
)
from liera_vision.core import AdapterConfig, AdapterLayer, adapter_layers, apply_adapters
from liera_vision.models import create_convnextv2


def grating_task(n: int, size: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy coloured sine gratings; the label is the orientation bin (jittered within the bin)."""
    y = torch.randint(0, classes, (n,), generator=generator)
    jitter = (torch.rand(n, generator=generator) - 0.5) * 0.5
    theta = (y.float() + jitter) * math.pi / classes
    freq = 2 * math.pi * (3 + 3 * torch.rand(n, generator=generator)) / size
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    proj = theta.cos()[:, None, None] * cols + theta.sin()[:, None, None] * rows
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    color = 0.5 + 0.5 * torch.rand(n, 3, generator=generator)
    x = wave[:, None] * color[:, :, None, None] + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int, lr: float,
          seed: int, label: str) -> float:
    """A short AdamW run (a measurement harness, not the library's training path); returns the last loss."""
    generator = torch.Generator().manual_seed(seed)  # same batches for every method
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in track(range(steps), description=f"training {label}", console=console, transient=True):
        idx = torch.randint(0, len(x), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(128), y.split(128))) / len(y)


@torch.no_grad()
def learned_update(layer: AdapterLayer) -> torch.Tensor:
    """``W' − W`` in float64, as the factorization's ``rows × cols`` matrix."""
    exact = copy.deepcopy(layer).double()
    update = exact.effective_weight() - exact.base_layer.weight
    factors = layer.settings[layer.active_adapter].factors
    return update.reshape(factors.rows, factors.cols)


def effective_rank(singular_values: torch.Tensor, threshold: float) -> int:
    if singular_values.numel() == 0 or singular_values[0] == 0:
        return 0
    return int((singular_values > threshold * singular_values[0]).sum())


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    kh, kw = module.kernel_size
    if module.groups > 1 and module.groups == module.in_channels:
        return f"depthwise {kh}x{kw}"
    if (kh, kw) == (1, 1):
        return "pointwise 1x1"
    return f"{'stem' if module.in_channels == 3 else 'downsample'} {kh}x{kw}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", default="atto")
    parser.add_argument("--checkpoint", help="backbone weights (timm / official / FCMAE file); default random init")
    parser.add_argument("--methods", nargs="+", default=["lora", "liera-taylor"], choices=list(ADAPTER_METHODS))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="all", choices=["all", "spatial", "pointwise"],
                        help="adapted layers (default all: spatial and pointwise convs; the head trains in full)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train", type=int, default=512, help="generated training images")
    parser.add_argument("--val", type=int, default=256, help="generated held-out images (accuracy only)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threshold", type=float, default=1e-3,
                        help="a singular value counts when above threshold × the largest")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for key in ("rank", "size", "classes", "train", "val", "steps", "batch"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be a positive integer, got {getattr(args, key)}")
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold must be in (0, 1), got {args.threshold}")
    return args


def plot(rows: list[dict], spectra: dict, methods: list[str], threshold: float, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    idx = torch.arange(len(rows)).float()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        share = [r[f"eff_rank_{method}"] / r["full_rank"] for r in rows]
        bars.bar(idx + (i - (len(methods) - 1) / 2) * width, share, width, label=method,
                 color="tab:red" if "liera" in method else "tab:blue")
    bars.scatter(idx, [r["lora_bound"] / r["full_rank"] for r in rows], marker="_", s=120, color="k", zorder=3,
                 label="LoRA bound min(inner, rows, cols)")
    bars.set_xticks(idx.tolist(), [f"{r['layer']} ({r['kind']})" for r in rows], rotation=90, fontsize=6)
    bars.set_ylabel("effective rank / full rank of the view")
    bars.set_ylim(0, 1.1)
    bars.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    for (layer, method), sv in spectra.items():
        lines.semilogy(sv / sv[0], ls="-" if "liera" in method else "--", label=f"{method}: {layer}")
    lines.axhline(threshold, color="k", lw=0.8, ls=":", label=f"threshold {threshold:g}")
    lines.set_ylim(1e-12, 2)
    lines.set_xlabel("singular value index")
    lines.set_ylabel("σ_i / σ_1")
    lines.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = configure("cpu", args.threads)
    generator = torch.Generator().manual_seed(0)
    x, y = grating_task(args.train + args.val, args.size, args.classes, generator)
    (x_train, x_val), (y_train, y_val) = x.split([args.train, args.val]), y.split([args.train, args.val])
    base = create_convnextv2(args.arch, num_classes=args.classes, checkpoint=args.checkpoint)

    layers, results = {}, {}
    for method in args.methods:
        model, _ = apply_adapters(copy.deepcopy(base), AdapterConfig(rank=args.rank, targets=args.targets,
                                                                     modules_to_save=["head"],
                                                                     **ADAPTER_METHODS[method]))
        loss = train(model, x_train, y_train, steps=args.steps, batch=args.batch, lr=args.lr, seed=1, label=method)
        results[method] = {"final_train_loss": round(loss, 4), "val_accuracy": accuracy(model, x_val, y_val)}
        layers[method] = adapter_layers(model)

    rows, singular_values = [], {}
    for name, first in layers[args.methods[0]].items():
        factors = first.settings["default"].factors
        n_rows, n_cols, inner = factors.rows, factors.cols, factors.inner
        row = {"layer": name, "kind": layer_kind(first.base_layer),
               "weight_shape": "x".join(map(str, first.base_layer.weight.shape)), "view": f"{n_rows}x{n_cols}",
               "full_rank": min(n_rows, n_cols), "lora_bound": min(inner, n_rows, n_cols)}
        weight_norm = first.base_layer.weight.double().norm().item()
        for method in args.methods:
            update = learned_update(layers[method][name])
            sv = torch.linalg.svdvals(update)
            singular_values[name, method] = sv.numpy()
            row[f"eff_rank_{method}"] = effective_rank(sv, args.threshold)
            row[f"rel_update_{method}"] = f"{update.norm().item() / weight_norm:.2e}"
            row[f"sv_min_ratio_{method}"] = f"{(sv[-1] / sv[0]).item():.1e}"  # σ_min / σ_1 of the view
        rows.append(row)
    # spectra plot: per layer kind where LoRA is rank-bound, the widest layer
    widest = {}
    for row in rows:
        if row["lora_bound"] < row["full_rank"] and row["full_rank"] >= widest.get(row["kind"], {}).get("full_rank", 0):
            widest[row["kind"]] = row
    spectra = {(r["layer"], m): singular_values[r["layer"], m] for r in widest.values() for m in args.methods}

    summary = []
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    for kind, group in by_kind.items():
        entry = {"kind": kind, "layers": len(group), "full_rank": _span([r["full_rank"] for r in group]),
                 "lora_bound": _span([r["lora_bound"] for r in group])}
        for method in args.methods:
            entry[f"eff_rank_{method}"] = _span([r[f"eff_rank_{method}"] for r in group])
        summary.append(entry)

    stem = f"rank_capacity-{args.arch}"
    title = (f"Effective rank (σ > {args.threshold:g}·σ₁) of W' − W after {args.steps} steps, convnextv2_{args.arch} "
             f"{args.size}², rank {args.rank}, targets={args.targets}")
    columns = {"layer": "layer", "kind": "kind", "view": "rows×cols", "full_rank": "full rank",
               "lora_bound": "LoRA bound", **{f"eff_rank_{m}": f"eff. rank {m}" for m in args.methods},
               **{f"rel_update_{m}": f"|U|/|W| {m}" for m in args.methods}}
    summary_columns = {"kind": "kind", "layers": "layers", "full_rank": "full rank", "lora_bound": "LoRA bound",
                       **{f"eff_rank_{m}": f"eff. rank {m}" for m in args.methods}}
    print_table(title, rows, columns)
    print_table("By layer kind (min–max over the layers)", summary, summary_columns)
    for method, result in results.items():
        console.print(f"{method}: final train loss {result['final_train_loss']}, "
                      f"held-out accuracy {result['val_accuracy']:.3f} ({args.classes} classes)")
    write_csv(args.out / f"{stem}.csv", rows)
    plot(rows, spectra, args.methods, args.threshold, title, args.out / f"{stem}.png")
    write_json(args.out / f"{stem}.json", {
        "environment": environment(device, "benchmarks.rank_capacity", list(argv if argv is not None else [])),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": results, "summary": summary,
        "markdown": markdown_table(summary, summary_columns) + "\n\n" + markdown_table(rows, columns),
    })
    console.print(f"wrote {args.out / stem}.{{csv,png,json}}")
    return rows


def _span(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}–{max(values)}"


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
