"""Inference: a merged LieRA model runs at the unadapted model's speed and answers like the adapted one.

    python -m benchmarks.inference                           # atto, 224², batch 16, CPU
    python -m benchmarks.inference --arch base --batch 4
    python -m benchmarks.inference --device cuda --arch base --batch 64

Four models, timed round-robin in inference mode:

==============  ==============================================================================
unadapted       ConvNeXt-V2 as built
unadapted-copy  a second, identical copy: the ratio of this A/A pair is the noise band
merged          LieRA adapters folded into the weights by ``merge_and_unload`` (plain layers)
unmerged        the same adapted model with live adapters (``W'`` recomputed every forward)
==============  ==============================================================================

The adapters are first moved away from their identity initialisation (``lora_B`` drawn from
N(0, ``--perturb``²), seeded), so the adapted model's outputs differ from the unadapted one's and the
check that ``merged`` reproduces ``unmerged`` means something. Reported: median latency per
batch, ratios to ``unadapted`` per round (median and range), and the largest output difference.
Writes ``<out>/inference-<arch>-<device>.{csv,png,json}``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    ADAPTER_METHODS,
    RESULTS,
    configure,
    console,
    environment,
    markdown_table,
    median,
    print_table,
    ratio_to,
    save_figure,
    threads_label,
    time_interleaved,
    write_csv,
    write_json,
)
from liera_vision.core import AdapterConfig, AdapterLayer, adapter_layers, apply_adapters, merge_and_unload
from liera_vision.models import create_convnextv2

MODELS = ("unadapted", "unadapted-copy", "merged", "unmerged")
COLUMNS = {"model": "model", "batch_s": "s / batch", "x_unadapted": "× unadapted", "range": "rounds",
           "cpu_x_unadapted": "CPU × unadapted", "max_abs_diff_vs_unmerged": "max |Δ| vs unmerged"}


def build_models(arch: str, classes: int, method: str, rank: int, perturb: float,
                 device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    unadapted = create_convnextv2(arch, num_classes=classes).to(device).eval()
    adapted, _ = apply_adapters(copy.deepcopy(unadapted),
                                AdapterConfig(rank=rank, modules_to_save=["head"], **ADAPTER_METHODS[method]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(adapted).values():
            B = layer.lora_B["default"]
            B.add_((torch.randn(B.shape, generator=generator, dtype=B.dtype) * perturb).to(B.device))
    merged = merge_and_unload(copy.deepcopy(adapted))
    leftover = [n for n, m in merged.named_modules() if isinstance(m, AdapterLayer)]
    if leftover:
        raise RuntimeError(f"merge_and_unload left adapter layers behind: {leftover[:4]}")
    # the merged weights must fit the plain architecture exactly (same modules, same speed by construction)
    plain = copy.deepcopy(unadapted)
    plain.load_state_dict(merged.state_dict(), strict=True)
    return {"unadapted": unadapted, "unadapted-copy": copy.deepcopy(unadapted), "merged": plain,
            "unmerged": adapted.eval()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", default="atto")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--method", default="liera-taylor", choices=list(ADAPTER_METHODS))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--perturb", type=float, default=0.05, help="std of the noise added to lora_B")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of merged vs unmerged outputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: least disturbed by other work on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for key in ("size", "batch", "rank", "classes"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be a positive integer, got {getattr(args, key)}")
    if not args.perturb > 0:
        parser.error(f"--perturb must be positive (a zero update makes the output check vacuous), got {args.perturb}")
    return args


def plot(rows: list[dict], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6))
    names = [r["model"] for r in rows][::-1]
    values = [r["x_unadapted"] for r in rows][::-1]
    ax.barh(names, values, color=["tab:red" if n == "unmerged" else "tab:blue" if n == "merged" else "dimgray"
                                  for n in names])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("latency / unadapted (median of per-round ratios)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = configure(args.device, args.threads)
    models = build_models(args.arch, args.classes, args.method, args.rank, args.perturb, device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.inference_mode():
        outputs = {name: model(x) for name, model in models.items()}
        steps = {name: (lambda m=model: m(x)) for name, model in models.items()}
        console.print(f"convnextv2_{args.arch} {args.size}² batch {args.batch}, {args.method} rank {args.rank}, "
                      f"{device}, {threads_label()}: {len(models)} models × "
                      f"({args.warmup} warm-up + {args.rounds} timed) forwards")
        times = time_interleaved(steps, rounds=args.rounds, warmup=args.warmup, device=device, label="inference")
    reference = outputs["unmerged"]
    scale = reference.abs().max().item()
    rows = []
    for name in models:
        ratios = ratio_to(times.wall, name, "unadapted")
        rows.append({
            "model": name,
            "batch_s": round(median(times.wall[name]), 4),
            "x_unadapted": round(median(ratios), 3),
            "range": f"{min(ratios):.3f}–{max(ratios):.3f}",
            "cpu_x_unadapted": round(median(ratio_to(times.cpu, name, "unadapted")), 3),
            "max_abs_diff_vs_unmerged": f"{(outputs[name] - reference).abs().max().item():.2e}",
        })
    merged_diff = (outputs["merged"] - reference).abs().max().item()
    checks = {
        "merged equals unmerged": {"max_abs_diff": merged_diff, "atol": args.atol, "output_scale": scale,
                                   "ok": merged_diff <= args.atol},
        "adapters changed the outputs": {"max_abs_diff_unadapted_vs_unmerged":
                                         (outputs["unadapted"] - reference).abs().max().item()},
    }
    stem = f"inference-{args.arch}-{device.type}"
    title = (f"Inference, convnextv2_{args.arch} {args.size}² batch {args.batch}, {args.method} r{args.rank}, "
             f"{device.type}, {threads_label()} (median of {args.rounds} interleaved rounds)")
    print_table(title, rows, COLUMNS)
    verdict = "yes" if checks["merged equals unmerged"]["ok"] else "NO"
    console.print(f"merged == unmerged within atol {args.atol:g}: {verdict} (max |Δ| {merged_diff:.2e}, "
                  f"outputs up to {scale:.2f}; the adapters moved the outputs by up to "
                  f"{checks['adapters changed the outputs']['max_abs_diff_unadapted_vs_unmerged']:.2e})")
    write_csv(args.out / f"{stem}.csv", [{"arch": args.arch, "size": args.size, "batch": args.batch,
                                          "method": args.method, "rank": args.rank, "device": device.type, **r}
                                         for r in rows])
    plot(rows, title, args.out / f"{stem}.png")
    write_json(args.out / f"{stem}.json", {
        "environment": environment(device, "benchmarks.inference", list(argv if argv is not None else [])),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": times.wall, "cpu_s": times.cpu, "checks": checks, "markdown": markdown_table(rows, COLUMNS),
    })
    console.print(f"wrote {args.out / stem}.{{csv,png,json}}")
    if not checks["merged equals unmerged"]["ok"]:
        raise SystemExit(f"merged outputs differ from the unmerged adapted model by {merged_diff:.2e} > {args.atol:g}")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
