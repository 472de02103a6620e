"""Transfer study: pre-train a small ConvNeXt-V2 on a generated source task, then fine-tune it on generated
VTAB-style target tasks with every method, each at the learning rate (and, for adapters, alpha) chosen on
a validation split.

    python -m benchmarks.transfer_study                 # the documented study: atto, 32 px, ~20 min on 2 cores
    python -m benchmarks.transfer_study --weight-stats convnextv2_base_22k_224_ema.pt --arch base
    # the real-image suite from an atto pre-trained on letters (another weight decay: another mean|W|), grid only
    python -m benchmarks.transfer_study --source letters --tasks sk_digits sk_texture sk_rotation \
        --source-weight-decay 0.05 --phases tune --methods lora liera-taylor
    # PEFT's HiRA and LoKr beside ours, all on the layers HiRA accepts, PEFT's at matched parameters
    python -m benchmarks.transfer_study --layers common --methods lora liera-taylor peft-hira peft-lokr \
        --seeds 0 1 --out benchmarks/results/peft

The second prints mean |W| per adapted layer kind of a checkpoint: the study's recommendation for Lie
updates is alpha / rank ≈ 1 / mean|W| at the protocol's lr (docs/benchmarks.md, part 3).

Steps (every training run is ``VTABClassifier`` + ``VTABDataModule`` under a Lightning ``Trainer``):

1. **Data.** A 10-class source task (``synth_source``: which of ten rotated shapes) and four 4-class
   target tasks in the NOAH / VTAB-1k folder layout (:mod:`liera_vision.vtab.synthetic`):
   ``synth_shape`` (natural), ``synth_texture`` (specialized: which texture covers the image, like
   eurosat / patch_camelyon), ``synth_position`` and ``synth_orientation`` (structured, like
   dsprites_loc / dsprites_ori). Generated once, cached under ``~/.cache/liera-vision/transfer-study/``.
   (``synth_count`` is available too, but at 32 px its objects are 2–3 px across and every method
   stays near chance.) ``--source letters`` and the real-image tasks (``sk_digits``, ``sk_texture``,
   ``sk_rotation``; :mod:`liera_vision.vtab.realdata`) run the same study on the demo's data.
2. **Source model.** ConvNeXt-V2 (``--arch``) fully trained from random init on the source task by
   :func:`liera_vision.vtab.pretrain.pretrain` (the demo's pre-training; ``--source-weight-decay``
   sets AdamW's weight decay, and with it mean |W|); the checkpoint (timm layout, safetensors) and
   its record are cached beside the data.
3. **Tune.** Every method over the same grid: ``--lrs`` for all, ``× --scalings`` (alpha / rank) for the
   adapters; each point trained on ``train800`` and scored on ``val200`` of every target task (seed 0).
   A method's setting is the point with the best mean validation accuracy over the tasks (ties: the
   smaller lr, then the smaller scaling). Test data is never looked at.
4. **Final** (``--phases`` may skip it). Each method at its chosen setting, trained on
   ``train800val200`` and tested on ``test``, ``--seeds`` seeds per task. Reported: mean ± std top-1,
   the chosen settings, trainable parameters, and how far each method moved the adapted layers
   (``‖W' − W‖ / ‖W‖``).

Runs go to ``<out>/transfer_study-runs.jsonl`` (one JSON line per finished run, appended atomically):
running the command again skips finished runs, so an interrupted study resumes where it stopped.
Runs execute in ``--workers`` processes of one torch thread each. Writes
``<out>/transfer_study.{csv,png,json}`` and ``<out>/transfer_study-grid.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import statistics
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.common import (
    ADAPTER_METHODS,
    PEFT_METHODS,
    RESULTS,
    build_peft_model,
    console,
    environment,
    markdown_table,
    plan_peft,
    print_table,
    save_figure,
    write_csv,
    write_json,
)
from liera_vision.core import AdapterConfig, AdapterLayer, select_targets
from liera_vision.models import create_convnextv2
from liera_vision.vtab import TASKS, realdata, synthetic
from liera_vision.vtab.pretrain import PretrainSettings, adapted_layer_kinds, letters_backbone, pretrain, weight_stats
from liera_vision.vtab.results import append_jsonl_atomic, read_jsonl

VERSION = 1
DEFAULT_METHODS = ("linear", "full", *ADAPTER_METHODS)  # study names; adapters as in benchmarks.common
METHODS = (*DEFAULT_METHODS, *PEFT_METHODS)  # PEFT's beside ours: --layers common puts all on the same layers
SOURCES = {"shapes": ("synth_source", 10), "letters": (realdata.SOURCE_TASK, len(realdata.LETTERS))}
# target task -> VTAB group (class counts: synthetic.num_classes / the registry)
TARGETS = {"synth_shape": "natural", "synth_texture": "specialized", "synth_count": "structured",
           "synth_orientation": "structured", "synth_position": "structured",
           **{t: TASKS[t].group for t in realdata.TASK_NAMES}}
DEFAULT_TARGETS = ("synth_shape", "synth_texture", "synth_position", "synth_orientation")
DATA_LAYOUT = 2  # the cache folder's format (2: written by liera_vision.vtab.noah)
RUNS_FILE = "transfer_study-runs.jsonl"
STEM = "transfer_study"


# --- tasks ------------------------------------------------------------------------------------
def num_classes(task: str) -> int:
    """Class count of a target task: generated (:mod:`liera_vision.vtab.synthetic`) or real (the registry)."""
    return TASKS[task].num_classes if task in realdata.TASK_NAMES else synthetic.num_classes(task)


def write_targets(root: Path, tasks: list[str], sizes: dict[str, int], image_size: int) -> None:
    """The target tasks in NOAH layout under ``root`` (generated ones as PNG; cached, deterministic)."""
    real = [t for t in tasks if t in realdata.TASK_NAMES]
    generated = [t for t in tasks if t not in realdata.TASK_NAMES]
    if generated:
        synthetic.generate(root, generated, image_size=image_size, sizes=sizes, seed=0, fmt="png")
    if real:
        realdata.generate(root, real, image_size=image_size, sizes=sizes, seed=0)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liera-vision" / "transfer-study"


# --- one training run (runs in a worker process) ------------------------------------------------
def _quiet() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def model_kwargs(method: str, rank: int, scaling: float | str | None, targets: list[str] | None = None) -> dict:
    """``scaling``: alpha / rank, or a weight-derived rule (``"auto"``, ``"auto-kind"``) passed on as alpha.
    ``targets``: exact layer names (``--layers common``); default the paper's layers. PEFT's methods start
    as a linear probe and are adapted by :func:`train_run`."""
    if method in ("linear", "full") or method in PEFT_METHODS:
        return {"finetune": "linear" if method in PEFT_METHODS else method}
    alpha = scaling if isinstance(scaling, str) else scaling * rank
    where = {"targets": [re.escape(t) for t in targets]} if targets else {}
    adapter = AdapterConfig(rank=rank, alpha=alpha, modules_to_save=["head"], **where, **ADAPTER_METHODS[method])
    return {"finetune": "adapter", "adapter": adapter}


@torch.no_grad()
def relative_update(model: torch.nn.Module, before: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict:
    """``‖W' − W‖ / ‖W‖`` of every adapted layer, averaged per kind and over all."""
    per_kind: dict[str, list[float]] = defaultdict(list)
    for name, w0 in before.items():
        module = model.get_submodule(name)
        if isinstance(module, AdapterLayer):
            w = module.effective_weight()
        else:  # a plain layer, or a merged PEFT layer holding W' in its base layer
            w = (module.get_base_layer() if hasattr(module, "get_base_layer") else module).weight
        per_kind[kinds[name]].append(((w - w0).norm() / w0.norm()).item())
    out = {kind: statistics.fmean(v) for kind, v in per_kind.items()}
    out["all"] = statistics.fmean(v for vs in per_kind.values() for v in vs)
    return out


def _resolved_scalings(model) -> dict[str, float] | None:
    """The alpha / rank each adapted layer kind got (one number per kind; the mean if a rule gave layers several)."""
    report = getattr(model, "report", None)
    if report is None:
        return None
    per_kind: dict[str, list[float]] = defaultdict(list)
    for layer in report.layers:
        per_kind[layer.kind].append(layer.scaling)
    return {kind: statistics.fmean(values) for kind, values in per_kind.items()}


def scaling_text(scaling: float | str | None) -> str:
    """``α/r 8`` for a number, ``α/r auto`` for a rule, empty for the methods without one."""
    if scaling is None:
        return ""
    return f"α/r {scaling}" if isinstance(scaling, str) else f"α/r {scaling:g}"


def train_run(spec: dict) -> dict:
    """Fine-tune the source model on one task with one method and setting; append and return its record."""
    import lightning as L

    from liera_vision.vtab import VTABClassifier, VTABDataModule

    _quiet()
    start = time.time()
    classes = num_classes(spec["task"])
    kinds = adapted_layer_kinds(create_convnextv2(spec["arch"], classes))  # before the seed: it draws numbers
    if spec["targets"]:
        kinds = {name: kind for name, kind in kinds.items() if name in spec["targets"]}
    L.seed_everything(spec["seed"], verbose=False)
    model = VTABClassifier(arch=spec["arch"], num_classes=classes, checkpoint=spec["checkpoint"],
                           lr=spec["lr"], warmup_epochs=spec["warmup_epochs"],
                           **model_kwargs(spec["method"], spec["rank"], spec["scaling"], spec["targets"]))
    peft = spec.get("peft")
    if peft:  # PEFT's method on its planned layers and rank; the head trains in full, as with ours
        model.model = build_peft_model(model.model, spec["method"], peft["rank"], peft["layers"], ["head"],
                                       scale=spec["scaling"] or 1.0, **peft["options"])
    data = VTABDataModule(root=spec["data_root"], task=spec["task"], num_classes=classes,
                          protocol="tune" if spec["phase"] == "tune" else "final", batch_size=spec["batch_size"],
                          num_workers=0, image_size=spec["image_size"])
    before = {}
    for name in kinds:
        module = model.model.get_submodule(name)
        before[name] = (module.base_layer if isinstance(module, AdapterLayer) else module).weight.detach().clone()
    trainer = L.Trainer(max_epochs=spec["epochs"], accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)  # the protocol's evaluation split: val200 or test
    trainable = model.parameter_count.trainable
    if peft:  # PEFT's W' from its own merge (merge_and_unload trips over a head in modules_to_save in PEFT 0.21)
        model.model.merge_adapter()
    tuned = model.model.base_model.model if peft else model.model
    record = {**{k: spec[k] for k in ("study", "phase", "method", "task", "seed", "lr", "scaling")},
              "group": TARGETS[spec["task"]], "eval_split": data.eval_split,
              "acc_final": model.test_accuracy, "acc_best": model.test_accuracy,
              "trainable_params": trainable, "rank": peft["rank"] if peft else spec["rank"],
              "scaling_resolved": _resolved_scalings(model),
              "rel_update": relative_update(tuned, before, kinds) if spec["method"] != "linear" else None,
              "wall_s": round(time.time() - start, 2)}
    append_jsonl_atomic(spec["runs_file"], record)
    return record


# --- the study --------------------------------------------------------------------------------
def grid(method: str, lrs: list[float], scalings: list[float]) -> list[tuple[float, float | None]]:
    """The settings a method is tuned over: the lr grid, times the scaling grid for adapters.

    PEFT's HiRA has no alpha (its update is LieRA-Taylor's at alpha / rank = 1), so its lr grid is every
    ``lr · alpha/r`` of the adapters' grid: under Adam the step of ``s·BA`` scales like the lr, so this reaches
    the Lie optimum (``alpha / rank ≈ 1 / mean|W|``) through the lr alone."""
    if method in ("linear", "full"):
        return [(lr, None) for lr in lrs]
    if method == "peft-hira":
        return [(lr, None) for lr in sorted({float(f"{lr * s:.6g}") for lr in lrs for s in scalings})]
    return [(lr, s) for lr in lrs for s in scalings]


def run_key(record: dict) -> tuple:
    return record["phase"], record["method"], record["task"], record["seed"], record["lr"], record["scaling"]


def study_fingerprint(args) -> str:
    """What makes two runs comparable; the grids, methods, tasks, seeds and phases only select runs.

    The source and its weight decay count only when they differ from the documented study's (shapes, 1e-4),
    so that study's runs file stays valid.
    """
    keys = ("arch", "image_size", "sizes", "source_sizes", "source_epochs", "source_lr", "epochs", "warmup_epochs",
            "batch_size", "rank")
    fields = {"version": VERSION, **{k: getattr(args, k) for k in keys}}
    if args.source != "shapes":
        fields["source"] = args.source
    if args.source_weight_decay != 1e-4:
        fields["source_weight_decay"] = args.source_weight_decay
    if args.layers != "paper":
        fields["layers"] = args.layers
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def finished_runs(path: Path, study: str) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    records = read_jsonl(path)
    other = {r.get("study") for r in records} - {study}
    if other:
        raise SystemExit(f"{path} holds runs of another study setting ({sorted(map(str, other))}, this one is "
                         f"{study}); use another --out or move the file away")
    return {run_key(r): r for r in records}


def execute(specs: list[dict], workers: int, label: str) -> list[str]:
    """Run ``specs`` (``workers`` processes of one thread each; in this process when 1); returns failures."""
    failures: list[str] = []
    if not specs:
        return failures
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(label, total=len(specs))

        def done(spec: dict, record: dict | None, error: BaseException | None) -> None:
            tag = " ".join(filter(None, (spec["phase"], spec["method"], f"lr {spec['lr']:g}",
                                         scaling_text(spec["scaling"]), spec["task"], f"seed {spec['seed']}")))
            if error is not None:
                failures.append(f"{tag}: {type(error).__name__}: {error}")
                progress.console.print(f"[red]FAILED[/red] {tag}: {type(error).__name__}: {error}")
            else:
                progress.console.print(f"{tag}: {100 * record['acc_final']:.1f}% on {record['eval_split']} "
                                       f"({record['wall_s']:.0f} s)")
            progress.advance(bar)

        if workers == 1:
            for spec in specs:
                try:
                    done(spec, train_run(spec), None)
                except Exception as err:  # one broken run must not cost the others
                    done(spec, None, err)
            return failures
        import multiprocessing

        # spawn: a fork of a process whose OpenMP pool has run can deadlock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet) as pool:
            futures = {pool.submit(train_run, spec): spec for spec in specs}
            for future in as_completed(futures):
                error = future.exception()
                done(futures[future], None if error else future.result(), error)
    return failures


def choose(tune: list[dict], methods: list[str], tasks: list[str]) -> tuple[dict, list[dict]]:
    """Per method, the setting with the best mean validation accuracy over ``tasks`` (ties: smaller lr, scaling)."""
    acc: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in tune:
        acc[r["method"], r["lr"], r["scaling"]][r["task"]] = r["acc_final"]
    rows, chosen = [], {}
    for method in methods:
        # rounded: accuracies come from float32 counts, so equal means can differ in the 8th decimal
        points = [(lr, s, round(statistics.fmean(v[t] for t in tasks), 6)) for (m, lr, s), v in acc.items()
                  if m == method and all(t in v for t in tasks)]
        if not points:
            raise SystemExit(f"no complete tuning results for {method}; rerun to finish them")
        best = min(points, key=lambda p: (-p[2], p[0], p[1] or 0))
        chosen[method] = {"lr": best[0], "scaling": best[1], "val_acc": best[2]}
        for lr, s, mean in sorted(points, key=lambda p: (p[0], p[1] or 0)):
            rows.append({"method": method, "lr": lr, "scaling": s, "val_mean": mean,
                         **{t: acc[method, lr, s][t] for t in tasks}, "chosen": (lr, s) == best[:2]})
    return chosen, rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(final: list[dict], chosen: dict, methods: list[str], tasks: list[str], seeds: list[int]) -> list[dict]:
    """One row per method: mean ± std over seeds per task and of the mean over tasks (per seed)."""
    acc = {(r["method"], r["task"], r["seed"]): r for r in final}
    rows = []
    for method in methods:
        records = [acc[method, t, s] for t in tasks for s in seeds if (method, t, s) in acc]
        row = {"method": method, "lr": chosen[method]["lr"], "scaling": chosen[method]["scaling"],
               "trainable_params": records[0]["trainable_params"], "val_acc": chosen[method]["val_acc"]}
        per_seed_means = []
        for task in tasks:
            values = [100 * acc[method, task, s]["acc_final"] for s in seeds if (method, task, s) in acc]
            row[task] = mean_std(values)
        for seed in seeds:
            if all((method, t, seed) in acc for t in tasks):
                per_seed_means.append(statistics.fmean(100 * acc[method, t, seed]["acc_final"] for t in tasks))
        row["mean"] = mean_std(per_seed_means)
        updates = [r["rel_update"]["all"] for r in records if r["rel_update"]]
        row["rel_update"] = statistics.fmean(updates) if updates else None
        rows.append(row)
    return rows


def _pm(value: tuple[float, float]) -> str:
    return f"{value[0]:.1f} ± {value[1]:.1f}"


def _setting(lr: float, scaling: float | None) -> str:
    return ", ".join(filter(None, (f"lr {lr:g}", scaling_text(scaling))))


def plot(summary: list[dict], grid_rows: list[dict], tasks: list[str], lrs: list[float], scalings: list[float],
         title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapters = [r["method"] for r in summary if r["scaling"] is not None]
    fig = plt.figure(figsize=(max(12.0, 2.6 * len(adapters) + 2.6), 8.5))
    spec = fig.add_gridspec(2, max(len(adapters) + 1, 2), height_ratios=[1.3, 1])
    bars = fig.add_subplot(spec[0, :])
    labels = [*tasks, "mean"]
    width = 0.8 / len(summary)
    for i, row in enumerate(summary):
        xs = [j + (i - (len(summary) - 1) / 2) * width for j in range(len(labels))]
        bars.bar(xs, [row[t][0] for t in labels], width, yerr=[row[t][1] for t in labels], capsize=2,
                 label=f"{row['method']} ({_setting(row['lr'], row['scaling'])})")
    bars.set_xticks(range(len(labels)), labels)
    bars.set_ylabel("test top-1 (%), mean ± std over seeds")
    bars.set_ylim(0, 100)
    chance = [100 / num_classes(t) for t in tasks]
    for j, level in enumerate([*chance, statistics.fmean(chance)]):  # dotted: chance of each task, of the mean
        bars.hlines(level, j - 0.45, j + 0.45, colors="k", lw=0.8, ls=":", label="chance" if j == 0 else None)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    val = {(r["method"], r["lr"], r["scaling"]): r["val_mean"] for r in grid_rows}
    for k, method in enumerate(adapters):
        ax = fig.add_subplot(spec[1, k])
        image = np.array([[val.get((method, lr, s), np.nan) * 100 for s in scalings] for lr in lrs])
        ax.imshow(image, vmin=statistics.fmean(chance), vmax=100, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(image):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 70 else "k")
        row = next(r for r in summary if r["method"] == method)
        i, j = lrs.index(row["lr"]), scalings.index(row["scaling"])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(scalings)), [f"{s:g}" for s in scalings], fontsize=7)
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=7)
        ax.set_xlabel("α / r", fontsize=8)
        if k == 0:
            ax.set_ylabel("lr (val mean %)", fontsize=8)
        ax.set_title(method, fontsize=8)
    line = fig.add_subplot(spec[1, len(adapters)])
    for row in [r for r in summary if r["scaling"] is None]:
        own = sorted(lr for m, lr, _ in val if m == row["method"])  # PEFT's HiRA: lr x alpha/r of the adapters
        points = line.plot(own, [val[row["method"], lr, None] * 100 for lr in own], marker="o", label=row["method"])
        line.plot([row["lr"]], [val[row["method"], row["lr"], None] * 100], marker="s", ms=10, mfc="none",
                  mec="red", mew=2, color=points[0].get_color())
    line.set_xscale("log")
    line.set_xlabel("lr", fontsize=8)
    line.set_ylim(0, 100)
    line.legend(fontsize=7)
    line.set_title("val mean % (red: chosen)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", default="atto")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs=3, default=[160, 80, 800], metavar=("TRAIN", "VAL", "TEST"),
                        help="images per target task in train800 / val200 / test")
    parser.add_argument("--source-sizes", type=int, nargs=3, default=[5400, 600, 1000],
                        metavar=("TRAIN", "VAL", "TEST"), help="images of the source task (it trains on both)")
    parser.add_argument("--source", choices=list(SOURCES), default="shapes",
                        help="pre-training task: shapes (synth_source, 10 classes) or letters (26; the demo's)")
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--source-lr", type=float, default=1e-3)
    parser.add_argument("--source-weight-decay", type=float, default=1e-4,
                        help="AdamW weight decay of the pre-training (sets the backbone's mean |W|)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per run")
    parser.add_argument("--warmup-epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8, help="rank of every adapter method")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--scalings", type=float, nargs="+", default=[1, 8, 64],
                        help="adapter scaling alpha / rank values of the grid")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS),
                        help=f"default: {' '.join(DEFAULT_METHODS)}; PEFT's need the peft extra")
    parser.add_argument("--layers", choices=["paper", "common"], default="paper",
                        help="paper: every adapter on the paper's layers (PEFT's on those it accepts, at --rank); "
                             "common: all on the layers every requested PEFT method accepts, PEFT's at the rank "
                             "matching LieRA-Taylor's adapter parameters")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TARGETS), choices=list(TARGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the final runs")
    parser.add_argument("--phases", nargs="+", choices=["tune", "final"], default=["tune", "final"],
                        help="'tune' alone: only the validation grid (no test runs)")
    parser.add_argument("--workers", type=int, default=2, help="training processes (one torch thread each)")
    parser.add_argument("--cache", type=Path, default=None, help="data and source model (default: "
                                                                "~/.cache/liera-vision/transfer-study)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--weight-stats", type=Path, metavar="CHECKPOINT",
                        help="only print mean |W| per adapted layer kind of a ConvNeXt-V2 checkpoint of --arch")
    args = parser.parse_args(argv)
    for key in ("image_size", "source_epochs", "epochs", "batch_size", "rank", "workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    for key in ("sizes", "source_sizes"):
        if min(getattr(args, key)) < 1:
            parser.error(f"--{key.replace('_', '-')} must be three positive counts, got {getattr(args, key)}")
    for key in ("lrs", "scalings"):
        if min(getattr(args, key)) <= 0:
            parser.error(f"--{key} must be positive, got {getattr(args, key)}")
    if args.warmup_epochs < 0:
        parser.error(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    if args.source_weight_decay < 0:
        parser.error(f"--source-weight-decay must be >= 0, got {args.source_weight_decay}")
    if "tune" not in args.phases:
        parser.error("--phases needs 'tune' (the finals run at the settings it chooses)")
    args.sizes = dict(zip(synthetic.DEFAULT_SIZES, args.sizes))
    args.source_sizes = dict(zip(synthetic.DEFAULT_SIZES, args.source_sizes))
    args.lrs, args.scalings = sorted(set(args.lrs)), sorted(set(args.scalings))
    args.cache = args.cache or cache_dir()
    return args


WEIGHT_COLUMNS = {"kind": "adapted layers", "layers": "layers", "entries": "entries", "random": "mean |W| random init",
                  "source": "mean |W| source model", "inverse": "1 / mean |W| (source)"}


def print_weight_stats(args) -> None:
    model = create_convnextv2(args.arch, 1000, checkpoint=args.weight_stats)
    rows = [{**r, "mean_abs": f"{r['mean_abs']:.4f}", "std": f"{r['std']:.4f}",
             "inverse": f"{1 / r['mean_abs']:.0f}"} for r in weight_stats(model)]
    print_table(f"{args.weight_stats}: convnextv2_{args.arch}, the layers the adapters wrap", rows,
                {"kind": "kind", "layers": "layers", "entries": "entries", "mean_abs": "mean |W|", "std": "std",
                 "inverse": "1 / mean |W|"})


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.weight_stats:
        print_weight_stats(args)
        return []
    start = time.time()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the source model trains here; the runs in workers
    env = environment(torch.device("cpu"), "benchmarks.transfer_study", list(argv if argv is not None else []))
    study = study_fingerprint(args)
    runs_file = args.out / RUNS_FILE
    done = finished_runs(runs_file, study)  # a runs file of another setting is refused before anything trains
    sizes, src = args.sizes, args.source_sizes
    root = args.cache / (f"v{VERSION}.{DATA_LAYOUT}-{args.image_size}px-targets-{'-'.join(map(str, sizes.values()))}"
                         f"-source-{'-'.join(map(str, src.values()))}")
    console.print(f"transfer study {study}: convnextv2_{args.arch}, {args.image_size} px, data and source model "
                  f"in {root}")
    write_targets(root, args.tasks, sizes, args.image_size)
    source_task, source_classes = SOURCES[args.source]
    settings = PretrainSettings(arch=args.arch, image_size=args.image_size, epochs=args.source_epochs,
                                lr=args.source_lr, weight_decay=args.source_weight_decay,
                                batch_size=args.batch_size, warmup_epochs=1.0, seed=0)
    console.print(f"source model: {source_task}, {settings.tag()}")
    if args.source == "letters":
        backbone = letters_backbone(args.cache, settings, sizes=src, echo=console.print)
    else:
        synthetic.generate(root, [source_task], image_size=args.image_size, sizes=src, seed=0, fmt="png")
        backbone = pretrain(root, source_task, source_classes, root, settings, echo=console.print)
    checkpoint, source = backbone.path, backbone.record
    cached = backbone.cached
    console.print(f"source model{' (cached)' if cached else ''}: {100 * source['test_accuracy']:.1f}% test top-1 on "
                  f"{source_task} ({source_classes} classes), {settings.epochs} epochs, {source['wall_s']:.0f} s; "
                  f"{checkpoint}")
    torch.manual_seed(0)
    random_stats = weight_stats(create_convnextv2(args.arch, source_classes))
    source_model = create_convnextv2(args.arch, source_classes, checkpoint=checkpoint)
    source_stats = weight_stats(source_model)
    weights = [{"kind": r["kind"], "layers": r["layers"], "entries": r["entries"], "random": f"{r['mean_abs']:.4f}",
                "source": f"{s['mean_abs']:.4f}", "inverse": f"{1 / s['mean_abs']:.0f}"}
               for r, s in zip(random_stats, source_stats)]
    print_table("Adapted layers of the source model (stem, downsamples, depthwise convs)", weights, WEIGHT_COLUMNS)
    paper = select_targets(source_model, AdapterConfig(rank=args.rank, modules_to_save=["head"]))
    try:
        plan = plan_peft(source_model, [m for m in args.methods if m in PEFT_METHODS], args.rank, paper, args.layers)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if plan.skipped:
        raise SystemExit("error: " + "; ".join(f"{m}: {why}" for m, why in plan.skipped.items()))
    if plan.methods:
        print_table(f"Where the adapters go (--layers {args.layers})", [
            {"method": "ours", "layers": f"{len(plan.targets)}/{len(paper)}", "rank": args.rank, "note": ""},
            *({"method": m, "layers": f"{len(p['layers'])}/{len(paper)}", "rank": p["rank"], "note": p["note"]}
              for m, p in plan.methods.items())], {"method": "method", "layers": "layers", "rank": "rank",
                                                   "note": "note"})

    common = {"study": study, "arch": args.arch, "checkpoint": str(checkpoint), "data_root": str(root),
              "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
              "warmup_epochs": args.warmup_epochs, "rank": args.rank, "runs_file": str(runs_file),
              "targets": plan.targets if args.layers == "common" else None}
    phase_wall, trained = {}, {}

    def run_phase(phase: str, specs: list[dict], split: str) -> dict[tuple, dict]:
        """Train what ``specs`` lacks in the runs file; returns every finished run (a rerun skips the done ones)."""
        todo = [s for s in specs if run_key(s) not in done]
        console.print(f"{phase}: {len(specs)} runs ({split}), {len(specs) - len(todo)} finished earlier")
        trained[phase], phase_start = len(todo), time.time()
        failures = execute(todo, args.workers, phase)
        phase_wall[phase] = round(time.time() - phase_start, 1)
        if failures:
            raise SystemExit(f"{len(failures)} {phase} runs failed (run again to retry them):\n" + "\n".join(failures))
        return finished_runs(runs_file, study)

    tune_specs = [{**common, "phase": "tune", "method": m, "task": t, "seed": 0, "lr": lr, "scaling": s,
                   "peft": plan.methods.get(m)}
                  for m in args.methods for lr, s in grid(m, args.lrs, args.scalings) for t in args.tasks]
    done = run_phase("tune", tune_specs, "train800 -> val200")
    chosen, grid_rows = choose([done[run_key(s)] for s in tune_specs], args.methods, args.tasks)

    summary = []
    if "final" in args.phases:
        final_specs = [{**common, "phase": "final", "method": m, "task": t, "seed": seed, "lr": chosen[m]["lr"],
                        "scaling": chosen[m]["scaling"], "peft": plan.methods.get(m)}
                       for m in args.methods for t in args.tasks for seed in args.seeds]
        done = run_phase("final", final_specs, "train800val200 -> test")
        final = [done[run_key(s)] for s in final_specs]
        summary = summarise(final, chosen, args.methods, args.tasks, args.seeds)
    wall = round(time.time() - start, 1)

    # --- tables, files ---
    grid_columns = {"method": "method", "lr": "lr", "scaling": "α/r", **{t: t for t in args.tasks},
                    "val_mean": "val mean", "chosen": "chosen"}
    grid_table = [{**r, "lr": f"{r['lr']:g}", "scaling": "–" if r["scaling"] is None else f"{r['scaling']:g}",
                   **{t: f"{100 * r[t]:.1f}" for t in args.tasks}, "val_mean": f"{100 * r['val_mean']:.1f}",
                   "chosen": "✔" if r["chosen"] else ""} for r in grid_rows]
    final_columns = {"method": "method", "lr": "lr", "scaling": "α/r", "trainable_params": "trainable",
                     **{t: f"{t} ({TARGETS[t]})" for t in args.tasks}, "mean": "mean of tasks",
                     "val_acc": "val mean (tune)", "rel_update": "‖W'−W‖/‖W‖"}
    final_table = [{"method": r["method"], "lr": f"{r['lr']:g}",
                    "scaling": "–" if r["scaling"] is None else f"{r['scaling']:g}",
                    "trainable_params": f"{r['trainable_params']:,}", **{t: _pm(r[t]) for t in [*args.tasks, "mean"]},
                    "val_acc": f"{100 * r['val_acc']:.1f}",
                    "rel_update": "–" if r["rel_update"] is None else f"{r['rel_update']:.3f}"} for r in summary]
    title = (f"Transfer study: convnextv2_{args.arch} pre-trained on {source_task} (wd {args.source_weight_decay:g}), "
             f"{args.image_size} px, rank {args.rank}, {args.epochs} epochs; test top-1 % (mean ± std over seeds "
             f"{args.seeds})")
    print_table("Tuning grid: validation top-1 % (train800 -> val200, seed 0)", grid_table, grid_columns)
    if summary:
        print_table(title, final_table, final_columns)
    source_note = "was cached" if cached else f"took {source['wall_s']:.0f} s"
    phases = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in phase_wall.items())
    console.print(f"wall time {wall:.0f} s ({phases}; the source model {source_note}), "
                  f"load average {env['load_average_1_5_15'][0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"{STEM}-grid.csv", [{"method": r["method"], "lr": r["lr"], "scaling": r["scaling"],
                                               **{t: round(100 * r[t], 2) for t in args.tasks},
                                               "val_mean": round(100 * r["val_mean"], 2), "chosen": r["chosen"]}
                                              for r in grid_rows])
    if summary:
        write_csv(args.out / f"{STEM}.csv", [
            {"method": r["method"], "lr": r["lr"], "scaling": r["scaling"], "trainable_params": r["trainable_params"],
             "task": t, "group": TARGETS.get(t, ""), "acc_mean": round(r[t][0], 2), "acc_std": round(r[t][1], 2),
             "seeds": len(args.seeds), "rel_update": r["rel_update"]}
            for r in summary for t in [*args.tasks, "mean"]])
        plot(summary, grid_rows, args.tasks, args.lrs, args.scalings, title, args.out / f"{STEM}.png")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out / f"{STEM}.json", {
        "environment": {**env, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "settings": settings, "study": study, "wall_s": wall, "phase_wall_s": phase_wall,
        "runs_trained_in_this_invocation": trained,
        "source_model": {"checkpoint": str(checkpoint), "cached": cached, **source},
        "weight_stats": {"random_init": random_stats, "source": source_stats}, "peft": plan.record,
        "chosen": chosen, "summary": summary,
        "markdown": "\n\n".join([markdown_table(weights, WEIGHT_COLUMNS), markdown_table(grid_table, grid_columns),
                                   *([markdown_table(final_table, final_columns)] if summary else [])]),
    })
    written = f"{args.out / STEM}.{{csv,png,json}}" if summary else f"{args.out / STEM}.json"
    console.print(f"wrote {written}, {args.out / STEM}-grid.csv; runs in {runs_file}")
    return summary


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
