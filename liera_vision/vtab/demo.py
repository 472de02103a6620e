"""The built-in VTAB demo: generated NOAH-format tasks, a small ConvNeXt-V2, two methods, the report.

Everything the real pipeline does, scaled down to finish in a few minutes on 2 CPU cores: the
synthetic tasks of :mod:`.synthetic` (cached), ConvNeXt-V2 atto at 64 px, the method configs of
``configs/vtab`` swept over the tasks (one Lightning process per task, resumable), then the
report table, CSV and PNG. Without ``--checkpoint`` the backbone is random-initialised, which
says little about the methods. A Lie update ``W ⊙ ΔW`` is scaled by ``|W|``; the LieRA configs
carry ``alpha / rank = 64 ≈ 1 / mean|W|`` (the transfer study's choice, docs/benchmarks.md), which
fits the random atto too (mean |W| 0.016). The demo's lr (3e-3, every method) is the one the
transfer study chose for LoRA and full fine-tuning on its short schedules.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .report import report
from .results import RESULTS_FILE
from .sweep import run_sweep
from .synthetic import DEFAULT_SIZES, default_cache_dir, generate
from .tasks import SUITES

DEMO_METHODS = ("liera_r8", "lora_r8")


def demo_overrides(data_root: Path, args) -> list[str]:
    """The command-line overrides that scale the protocol down to the demo (printed, so they can be reused)."""
    out = ["--data.root", str(data_root), "--model.arch", args.arch, "--data.image_size", str(args.image_size),
           "--data.batch_size", "32", "--data.num_workers", "0",
           "--trainer.max_epochs", str(args.epochs), "--trainer.check_val_every_n_epoch", str(max(1, args.epochs // 3)),
           "--model.warmup_epochs", "1", "--model.lr", str(args.lr)]
    if args.checkpoint:
        out += ["--model.checkpoint", str(args.checkpoint)]
    return out


def main(argv: list[str] | None = None, configs_dir: str | Path = "configs/vtab") -> int:
    parser = argparse.ArgumentParser(description="VTAB-1k pipeline demo on generated data (no downloads).")
    parser.add_argument("--data-root", type=Path, help="a NOAH-format VTAB-1k folder (default: generate the "
                                                       "synthetic demo tasks into the cache)")
    parser.add_argument("--tasks", default=",".join(SUITES["synthetic"]),
                        help="comma-separated task folders under the data root")
    parser.add_argument("--methods", default=",".join(DEMO_METHODS),
                        help=f"config names in {configs_dir} (e.g. liera_r16,lora_r16,dora_liera_r16)")
    parser.add_argument("--checkpoint", type=Path, help="ConvNeXt-V2 weights (official / FCMAE / timm file) "
                                                        "matching --arch; default: random initialisation")
    parser.add_argument("--arch", default="atto")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="demo learning rate for every method (the configs keep the protocol's 1e-3 for 100 "
                             "epochs; the demo's 15 need more). alpha comes from each config")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/vtab-demo"))
    args = parser.parse_args(argv)
    start = time.time()
    configs_dir = Path(configs_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if not (configs_dir / f"{method}.yaml").is_file():
            parser.error(f"no config {configs_dir / (method + '.yaml')}; available: "
                         f"{sorted(p.stem for p in configs_dir.glob('*.yaml'))}")

    print("liera-vision VTAB-1k demo")
    if args.data_root is None:
        data_root = default_cache_dir(args.image_size)
        print(f"data: synthetic tasks {tasks} in NOAH layout ({DEFAULT_SIZES['train800']} train800 + "
              f"{DEFAULT_SIZES['val200']} val200 + {DEFAULT_SIZES['test']} test images each, "
              f"{args.image_size} px), cached in {data_root}")
        generate(data_root, tasks, image_size=args.image_size)
    else:
        data_root = args.data_root
        print(f"data: {data_root}")
    if args.checkpoint:
        print(f"backbone: ConvNeXt-V2 {args.arch} from {args.checkpoint}")
    else:
        print(f"backbone: ConvNeXt-V2 {args.arch}, RANDOM-INITIALISED (no --checkpoint): the accuracies show the "
              "pipeline working, not what the methods reach on pretrained weights.")
    print("real data / weights: --data-root <NOAH vtab-1k folder> --tasks cifar,dtd,... --arch base "
          "--checkpoint convnextv2_base_22k_224_ema.pt --image-size 224, or tools/vtab_sweep.py (docs/vtab.md)\n")

    extra = demo_overrides(data_root, args)
    failed = []
    for method in methods:
        config = configs_dir / f"{method}.yaml"
        print(f"=== {method}: {sys.executable} tools/vtab_sweep.py --config {config} --run-dir {args.run_dir / method} "
              f"--tasks {','.join(tasks)} -- {shlex.join(extra)}", flush=True)
        summary = run_sweep(config, args.run_dir / method, tasks, extra, name=method,
                            echo=lambda line: print(line, flush=True), in_process=True)
        failed += [f"{method}/{t}" for t in summary.failed]
    done = [args.run_dir / m for m in methods if (args.run_dir / m / RESULTS_FILE).is_file()]
    if not done:
        print(f"no results to report; FAILED: {failed}")
        return 1
    markdown, _ = report(done, out_dir=args.run_dir)
    print("\n" + markdown)
    print(f"wrote {args.run_dir / 'vtab_report.md'}, .csv and .png; per-task logs, checkpoints and adapters under "
          f"{args.run_dir}/<method>/<task>/ (run again to reuse them; delete {args.run_dir} to retrain)")
    print(f"demo finished in {time.time() - start:.0f} s")
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0
