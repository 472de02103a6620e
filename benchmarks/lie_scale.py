"""LieRA's scale set by the weights: does ``alpha="auto"`` (α/r = 1/mean|W|) land at the swept optimum?

    python -m benchmarks.lie_scale          # two letters backbones (AdamW wd 1e-4 and 8), ~20 min on 2 cores
    python -m benchmarks.lie_scale --weight-decays 1e-4 --lrs 3e-3   # one backbone, one lr

A Lie update moves W by ``W ⊙ ΔW``, so its step per unit of lr × α/r scales with |W|; the study in
``docs/benchmarks.md`` ("Transfer") found the Lie optimum near α/r = 1/mean|W| of the adapted layers.
This script asks whether the automatic settings hit that optimum on backbones whose mean|W| differs:

1. **Data**: the demo's real-image suite (:mod:`liera_vision.vtab.realdata`: ``sk_digits``,
   ``sk_texture``, ``sk_rotation``) with a larger validation split (``--sizes``), cached.
2. **Backbones**: ConvNeXt-V2 atto pre-trained on ``letters`` by the demo's own
   :func:`liera_vision.vtab.pretrain.letters_backbone`, once per ``--weight-decays`` value (AdamW's
   decoupled weight decay sets how large the weights end up); the wd 1e-4 one is the demo's backbone.
3. **Grid**, on validation only (train800 → val200, ``--seeds``): LoRA over ``--lrs`` × ``--lora-scalings``;
   LieRA (Taylor) over ``--lrs`` × ``--lie-scalings`` and at the weight-derived rules ``auto`` (one
   α/r for every adapted layer) and ``auto-kind`` (one per layer kind: stem, downsamples, depthwise).
   Every run is ``VTABClassifier`` + ``VTABDataModule`` under a Lightning ``Trainer``
   (:func:`benchmarks.transfer_study.train_run`), rank 8 on the paper's layers plus the head.
4. **Verdict** per backbone and lr: the best grid α/r, where ``auto`` lands (α/r it resolved to, its
   distance from the best in grid steps, its accuracy) and the same for a fixed α/r = 64 (the value
   the configs carried before).

Runs go to ``<out>/lie_scale-runs.jsonl`` (resumable: finished runs are skipped); the tables to
``lie_scale.{json,csv,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    console,
    environment,
    markdown_table,
    print_table,
    save_figure,
    write_csv,
    write_json,
)
from benchmarks.transfer_study import execute, finished_runs, run_key, write_targets
from liera_vision.vtab import TASKS, realdata
from liera_vision.vtab.pretrain import PretrainSettings, letters_backbone

VERSION = 1
RULES = ("auto", "auto-kind")
FIXED = 64.0  # the α/r the LieRA configs carried before the weight-derived default
STEM = "lie_scale"


def study_fingerprint(args, wd: float) -> str:
    keys = ("arch", "image_size", "sizes", "source_epochs", "epochs", "batch_size", "rank")
    text = json.dumps({"version": VERSION, "wd": wd, **{k: getattr(args, k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def grid_specs(args, common: dict) -> list[dict]:
    points = [("lora", lr, s) for lr in args.lrs for s in args.lora_scalings]
    points += [("liera-taylor", lr, s) for lr in args.lrs for s in [*args.lie_scalings, *RULES]]
    return [{**common, "phase": "tune", "method": m, "task": t, "seed": seed, "lr": lr, "scaling": s}
            for m, lr, s in points for t in args.tasks for seed in args.seeds]


def val_means(records: list[dict], tasks: list[str], seeds: list[int]) -> dict[tuple, float]:
    """(method, lr, scaling) -> validation top-1 (%) averaged over tasks and seeds."""
    acc: dict[tuple, dict] = defaultdict(dict)
    for r in records:
        acc[r["method"], r["lr"], r["scaling"]][r["task"], r["seed"]] = r["acc_final"]
    return {key: 100 * statistics.fmean(v.values()) for key, v in acc.items()
            if len(v) == len(tasks) * len(seeds)}


def grid_steps(value: float, best: float, grid: list[float]) -> float:
    """Distance of ``value`` from ``best`` in steps of the (geometric) grid."""
    ratio = grid[1] / grid[0] if len(grid) > 1 else 2.0
    return abs(math.log(value / best)) / math.log(ratio)


def verdict_rows(wd: float, mean_abs: float, vals: dict, resolved: dict, args) -> list[dict]:
    rows = []
    for lr in args.lrs:
        lie = {s: vals["liera-taylor", lr, s] for s in args.lie_scalings}
        best = max(lie, key=lambda s: (lie[s], -s))
        lora = {s: vals["lora", lr, s] for s in args.lora_scalings}
        lora_best = max(lora, key=lambda s: (lora[s], -s))
        auto = resolved["auto"]["all"]
        row = {"wd": f"{wd:g}", "mean_abs": f"{mean_abs:.4f}", "lr": f"{lr:g}", "best": f"{best:g}",
               "best_val": f"{lie[best]:.1f}", "auto": f"{auto:.0f}",
               "auto_steps": f"{grid_steps(auto, best, args.lie_scalings):.1f}",
               "auto_val": f"{vals['liera-taylor', lr, 'auto']:.1f}",
               "kind_val": f"{vals['liera-taylor', lr, 'auto-kind']:.1f}",
               "fixed_steps": f"{grid_steps(FIXED, best, args.lie_scalings):.1f}",
               "fixed_val": f"{lie[FIXED]:.1f}" if FIXED in lie else "–",
               "relative": f"{best * mean_abs:.2g}", "lora_best": f"{lora_best:g}",
               "lora_val": f"{lora[lora_best]:.1f}"}
        rows.append(row)
    return rows


VERDICT_COLUMNS = {"wd": "source wd", "mean_abs": "mean |W|", "lr": "lr", "best": "best grid α/r",
                   "best_val": "its val %", "auto": "auto α/r (1/mean|W|)", "auto_steps": "auto: steps from best",
                   "auto_val": "auto val %", "kind_val": "auto-kind val %", "fixed_steps": "α/r 64: steps from best",
                   "fixed_val": "α/r 64 val %", "relative": "best Lie α/r × mean|W|", "lora_best": "LoRA best α/r",
                   "lora_val": "LoRA best val %"}


def grid_table(wd: float, vals: dict, args) -> tuple[list[dict], dict[str, str]]:
    """One row per method and lr: validation % per α/r (LoRA and LieRA columns side by side) and per rule."""
    columns = {"wd": "source wd", "method": "method", "lr": "lr",
               **{f"{s:g}": f"α/r {s:g}" for s in sorted({*args.lora_scalings, *args.lie_scalings})},
               **{rule: rule for rule in RULES}}
    rows = []
    for method, scalings in (("lora", args.lora_scalings), ("liera-taylor", [*args.lie_scalings, *RULES])):
        for lr in args.lrs:
            row = {"wd": f"{wd:g}", "method": method, "lr": f"{lr:g}"}
            for s in scalings:
                row[s if isinstance(s, str) else f"{s:g}"] = f"{vals[method, lr, s]:.1f}"
            rows.append(row)
    return rows, columns


def plot(curves: list[dict], args, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.2), squeeze=False)
    chance = statistics.fmean(100 / TASKS[t].num_classes for t in args.tasks)
    for ax, curve in zip(axes[0], curves):
        for i, lr in enumerate(args.lrs):
            color = f"C{i}"
            ax.plot(args.lie_scalings, [curve["vals"]["liera-taylor", lr, s] for s in args.lie_scalings], "o-",
                    color=color, label=f"LieRA lr {lr:g}")
            ax.plot([curve["auto"]], [curve["vals"]["liera-taylor", lr, "auto"]], "*", ms=14, color=color,
                    mec="k", label="auto" if i == 0 else None)
            ax.axhline(max(curve["vals"]["lora", lr, s] for s in args.lora_scalings), color=color, ls="--", lw=0.8,
                       label="LoRA best" if i == 0 else None)
        ax.axvline(curve["auto"], color="k", lw=0.6, ls=":")
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("α / r")
        ax.set_ylabel("val top-1 %, mean of tasks and seeds")
        ax.set_title(f"letters atto, wd {curve['wd']:g}: mean|W| {curve['mean_abs']:.4f}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 8.0],
                        help="AdamW weight decay of each pre-trained backbone")
    parser.add_argument("--arch", default="atto")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs=3, default=[80, 200, 40], metavar=("TRAIN", "VAL", "TEST"),
                        help="images per task and split (the demo's 80 train800 images; a larger val200)")
    parser.add_argument("--source-epochs", type=int, default=PretrainSettings().epochs)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (the demo's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--lora-scalings", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    parser.add_argument("--lie-scalings", type=float, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024],
                        help="a geometric grid (the verdict counts steps of its ratio)")
    parser.add_argument("--tasks", nargs="+", default=list(realdata.TASK_NAMES), choices=list(realdata.TASK_NAMES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="data and backbones (default: the demo's, ~/.cache/liera-vision/"
                                                   "real-mini)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for key in ("image_size", "source_epochs", "epochs", "batch_size", "rank", "workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if min(args.sizes) < 1 or min(args.lrs) <= 0 or min(args.lora_scalings) <= 0 or min(args.lie_scalings) <= 0:
        parser.error("--sizes, --lrs and the scalings must be positive")
    if min(args.weight_decays) < 0:
        parser.error(f"--weight-decays must be >= 0, got {args.weight_decays}")
    args.sizes = dict(zip(realdata.DEFAULT_SIZES, args.sizes))
    args.lrs, args.lora_scalings = sorted(set(args.lrs)), sorted(set(args.lora_scalings))
    args.lie_scalings = sorted(set(args.lie_scalings))
    args.cache = args.cache or realdata.default_cache_dir().parent
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    start = time.time()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # pre-training here; the grid in workers
    env = environment(torch.device("cpu"), "benchmarks.lie_scale", list(argv if argv is not None else []))
    root = args.cache / realdata.default_cache_dir(args.image_size, args.sizes).name
    write_targets(root, args.tasks, args.sizes, args.image_size)
    args.out.mkdir(parents=True, exist_ok=True)
    verdicts, grid_rows, curves, backbones, tables = [], [], [], [], []
    for wd in args.weight_decays:
        settings = PretrainSettings(arch=args.arch, image_size=args.image_size, epochs=args.source_epochs,
                                    weight_decay=wd)
        backbone = letters_backbone(args.cache, settings, echo=console.print)
        mean_abs = backbone.mean_abs_weight
        backbones.append({"weight_decay": wd, "path": str(backbone.path), "mean_abs_weight": backbone.record[
            "mean_abs_weight"], "test_accuracy": backbone.record["test_accuracy"]})
        console.print(f"backbone wd {wd:g}: {100 * backbone.record['test_accuracy']:.1f}% on held-out letters, "
                      f"mean |W| {mean_abs:.4f} (1/mean|W| = {1 / mean_abs:.0f}); {backbone.path}")
        study = study_fingerprint(args, wd)
        runs_file = args.out / f"{STEM}-wd{wd:g}-runs.jsonl"
        done = finished_runs(runs_file, study)
        common = {"study": study, "arch": args.arch, "checkpoint": str(backbone.path), "data_root": str(root),
                  "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
                  "warmup_epochs": 1.0, "rank": args.rank, "runs_file": str(runs_file)}
        specs = grid_specs(args, common)
        todo = [s for s in specs if run_key(s) not in done]
        console.print(f"wd {wd:g}: {len(specs)} runs (train800 -> val200), {len(specs) - len(todo)} finished earlier")
        failures = execute(todo, args.workers, f"grid, wd {wd:g}")
        if failures:
            raise SystemExit(f"{len(failures)} runs failed (run again to retry them):\n" + "\n".join(failures))
        done = finished_runs(runs_file, study)
        records = [done[run_key(s)] for s in specs]
        vals = val_means(records, args.tasks, args.seeds)
        resolved = {rule: next(r["scaling_resolved"] for r in records if r["scaling"] == rule) for rule in RULES}
        resolved = {rule: {**kinds, "all": statistics.fmean(kinds.values())} for rule, kinds in resolved.items()}
        verdicts += verdict_rows(wd, mean_abs, vals, resolved, args)
        rows, columns = grid_table(wd, vals, args)
        print_table(f"Validation top-1 %, backbone wd {wd:g} (mean |W| {mean_abs:.4f}; auto: α/r "
                    f"{resolved['auto']['all']:.0f})", rows, columns)
        tables.append(markdown_table(rows, {k: v for k, v in columns.items() if any(k in r for r in rows)}))
        curves.append({"wd": wd, "mean_abs": mean_abs, "auto": resolved["auto"]["all"], "vals": vals})
        for (method, lr, s), v in sorted(vals.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
            grid_rows.append({"weight_decay": wd, "method": method, "lr": lr, "scaling": s, "val_mean": round(v, 2),
                              "resolved": json.dumps(resolved[s]) if s in RULES else ""})
        backbones[-1]["resolved"] = resolved

    print_table("Does the weight-derived α/r land at the swept optimum? (val top-1 %, mean of tasks × seeds "
                f"{args.seeds})", verdicts, VERDICT_COLUMNS)
    wall = round(time.time() - start, 1)
    console.print(f"wall time {wall:.0f} s, load average {os.getloadavg()[0]:.1f} at the end")
    write_csv(args.out / f"{STEM}.csv", grid_rows)
    plot(curves, args, args.out / f"{STEM}.png")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out / f"{STEM}.json", {"environment": env, "settings": settings, "wall_s": wall,
                                           "backbones": backbones, "verdict": verdicts,
                                           "markdown": "\n\n".join([*tables, markdown_table(verdicts,
                                                                                             VERDICT_COLUMNS)])})
    console.print(f"wrote {args.out / STEM}.{{csv,png,json}}; runs in {args.out}/{STEM}-wd*-runs.jsonl")
    return verdicts


if __name__ == "__main__":
    main()
