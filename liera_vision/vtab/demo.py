"""The main job: LieRA against LoRA, full fine-tuning and a linear probe, on real images, from a pre-trained backbone.

``tools/vtab_demo.py`` runs the whole VTAB pipeline, scaled to 2 CPU cores:

1. **Data** — the ``real-mini`` suite of :mod:`.realdata` (real images shipped in scikit-learn and
   scikit-image, one task per VTAB group, NOAH layout, disjoint image regions per split), cached in
   ``~/.cache/liera-vision/real-mini/``.
2. **Backbone** — a ConvNeXt-V2 atto pre-trained here on ``letters`` (26 classes, none shared with
   a target task; :func:`.pretrain.letters_backbone`), cached beside the data with a JSON record of
   how it was made.
3. **Runs** — each method × seed is a sweep (:func:`.sweep.run_sweep`) over the tasks, every task a
   ``train_vtab.py fit`` of the composed configs ``protocol/vtab1k.yaml`` + the method's file +
   ``demo.yaml`` (the demo's scale-down) + the flags it prints, run in ``--workers`` processes
   (in-process LightningCLI, one torch thread each). LoRA and LieRA use the same rank, factorization
   and layers (equal adapter parameters); alpha comes from each method's config.
4. **Report** — per task, group means and the mean, mean ± std over seeds, trainable parameters,
   chance; ``<run dir>/vtab_report.{md,csv,png}``.

Every invocation retrains the methods (data and backbone come from the cache); ``--resume`` keeps the
finished runs of an interrupted invocation instead. Output: one progress bar per run, the table;
Lightning's own messages go to ``<run dir>/demo.log`` and each distinct warning is said once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from .results import RESULTS_FILE
from .tasks import SUITES, TASKS, get_task

PROTOCOL = Path("protocol") / "vtab1k.yaml"
DEMO_CONFIG = "demo.yaml"
LOG_FILE = "demo.log"
# warnings the demo expects and that say nothing to its user
EXPECTED_WARNINGS = (
    r".*does not have many workers",   # data.num_workers 0: the 2 cores train; decoding 32 px images is cheap
    r".*LeafSpec",                     # torch's pytree deprecation, raised inside Lightning
    r".*RANDOM-INITIALISED",           # --random-init: said in the header instead
)


@dataclass(frozen=True)
class DemoMethod:
    """A method of the demo: its label in the results, its config file in ``configs/vtab`` and extra flags."""

    name: str
    config: str
    flags: tuple[str, ...] = ()
    cost: float = 1.0  # relative run time, to start the long ones first


METHODS = {
    "linear": DemoMethod("linear", "linear_probe.yaml", cost=0.45),
    "lora": DemoMethod("lora-r8", "lora_r8.yaml"),
    "liera": DemoMethod("liera-taylor-r8", "liera_r8.yaml"),
    "liera-exp": DemoMethod("liera-exp-r8", "liera_r8.yaml", ("--model.adapter.composition", "exp"), cost=1.1),
    "full": DemoMethod("full", "full_finetune.yaml", cost=1.1),
}
DEFAULT_METHODS = ("linear", "lora", "liera", "liera-exp", "full")


def method(key: str, configs_dir: Path) -> DemoMethod:
    """A key of :data:`METHODS`, or the stem of any method file in ``configs_dir`` (e.g. ``lora_r16``)."""
    if key in METHODS:
        return METHODS[key]
    if (configs_dir / f"{key}.yaml").is_file():
        return DemoMethod(key, f"{key}.yaml")
    raise ValueError(f"unknown method {key!r}: expected one of {list(METHODS)} or a config in {configs_dir} "
                     f"({sorted(p.stem for p in configs_dir.glob('*.yaml') if p.name != DEMO_CONFIG)})")


# --- quiet Lightning, warnings said once ------------------------------------------------------------
def quiet_lightning() -> None:
    """Lightning's start-up notes (devices, tips, seeds, summaries) off, and jsonargparse's notices about how
    LightningCLI calls it (nothing a user of the demo can act on; its documented switch); warnings still pass."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    import lightning.pytorch  # noqa: F401 - its import sets its loggers to INFO: set them after it

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def recorded_warnings(into: list):
    """Collect ``(category, first line of the message)`` of every warning, except :data:`EXPECTED_WARNINGS`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            into += [(w.category.__name__, str(w.message).strip().splitlines()[0] if str(w.message).strip() else "")
                     for w in caught]


# --- progress: one bar per run ----------------------------------------------------------------------
class Display:
    """Draws the runs' progress events (:mod:`.progress`): rich bars on a terminal, one line per run otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.tasks: dict[str, object] = {}
        self.lock = threading.Lock()
        self.progress = None
        self.ended: list[tuple[str, str, float]] = []
        self.labels: dict[str, str] = {}

    def __enter__(self) -> Display:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<34}"), BarColumn(bar_width=28),
                                     MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                     console=Console(file=self.stream), redirect_stdout=False,
                                     redirect_stderr=False, refresh_per_second=4)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: tuple) -> None:
        kind, key, *rest = event
        with self.lock:
            if kind == "start":
                label, total = rest
                self.labels[key] = label
                if self.progress is not None:
                    self.tasks[key] = self.progress.add_task(label, total=total, status="")
            elif kind == "advance":
                steps, status = rest
                if key in self.tasks:
                    self.progress.update(self.tasks[key], advance=steps, status=status)
            elif kind == "end":
                status, seconds = rest
                self.ended.append((self.labels.get(key, key), status, seconds))
                if key in self.tasks:
                    self.progress.update(self.tasks[key], status=status)
                    self.progress.stop_task(self.tasks[key])
                else:
                    print(f"{self.labels.get(key, key)}: {status} ({seconds:.0f} s)", file=self.stream, flush=True)


# --- running the sweeps -----------------------------------------------------------------------------
def _sweep_job(job: dict) -> dict:
    """One method × seed: a sweep over the tasks, in this process. Returns what failed and the warnings seen."""
    from .sweep import run_sweep

    caught: list = []
    with recorded_warnings(caught):
        try:
            summary = run_sweep(job["configs"], job["run_dir"], job["tasks"], job["extra"], name=job["name"],
                                echo=lambda line: print(line, flush=True), in_process=True)
            failed = dict(summary.failed)
        except (ValueError, OSError) as err:  # refused before any task ran: the message says why
            print(f"{job['name']}: {err}", flush=True)
            failed = {task: f"{type(err).__name__}: {err}" for task in job["tasks"]}
    return {"name": job["name"], "seed": job["seed"], "failed": failed, "warnings": caught}


def _worker_init(queue, threads: int, log_path: str) -> None:
    import torch

    from .progress import set_sink

    torch.set_num_threads(threads)
    set_sink(queue.put)
    quiet_lightning()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - the worker's stdout / stderr until it exits
    sys.stdout = sys.stderr = log


def run_jobs(jobs: list[dict], workers: int, display: Display, log_path: Path) -> list[dict]:
    """Run the sweeps: in this process (``workers == 1``) or in ``workers`` spawned processes of one thread each."""
    from .progress import set_sink

    log_path.parent.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        results = []
        set_sink(display)
        try:
            with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                for job in jobs:
                    results.append(_sweep_job(job))
        finally:
            set_sink(None)
        return results

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # a fork of a process whose OpenMP pool has run can deadlock
    queue = context.Queue()

    def pump() -> None:
        while True:
            event = queue.get()
            if event is None:
                return
            display(event)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(queue, 1, str(log_path))) as pool:
            results = list(pool.map(_sweep_job, jobs))
    finally:
        queue.put(None)
        thread.join(timeout=10)
    return results


# --- the command ------------------------------------------------------------------------------------
def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None, configs_dir: Path) -> argparse.Namespace:
    from .pretrain import PretrainSettings
    from .realdata import DEFAULT_SIZES, TASK_NAMES

    defaults = PretrainSettings()
    scale_down = yaml.safe_load((configs_dir / DEMO_CONFIG).read_text())  # the one place of the demo's defaults
    parser = argparse.ArgumentParser(
        prog="vtab_demo.py",
        description="LieRA vs LoRA, full fine-tuning and a linear probe on real images (scikit-learn / scikit-image), "
                    "from a ConvNeXt-V2 atto pre-trained here on rendered letters; the VTAB pipeline on 2 CPU cores.",
        epilog="Real VTAB-1k instead: --data-root data/vtab-1k --suite vtab-1k --tasks dtd,eurosat,kitti --arch base "
               "--image-size 224 --epochs 100 --lr 1e-3 --checkpoint convnextv2_base_22k_224_ema.pt "
               "(better: tools/vtab_sweep.py with the configs unchanged, docs/vtab.md)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated: {', '.join(METHODS)}, or config names in {configs_dir} (e.g. lora_r16)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of every run (default 0,1)")
    parser.add_argument("--tasks", help=f"comma-separated task folders (default: the suite's, {', '.join(TASK_NAMES)})")
    parser.add_argument("--epochs", type=int, default=scale_down["trainer"]["max_epochs"],
                        help=f"fine-tuning epochs per run (default: {DEMO_CONFIG}'s trainer.max_epochs, %(default)s)")
    parser.add_argument("--lr", type=float, default=scale_down["model"]["lr"],
                        help=f"lr of every method (default: {DEMO_CONFIG}'s model.lr, %(default)s; the protocol's 1e-3 "
                             "is for 100 epochs)")
    parser.add_argument("--image-size", type=int, default=scale_down["data"]["image_size"],
                        help=f"default: {DEMO_CONFIG}'s data.image_size, %(default)s")
    parser.add_argument("--sizes", type=int, nargs=3, default=list(DEFAULT_SIZES.values()),
                        metavar=("TRAIN800", "VAL200", "TEST"), help="images per split of every real-mini task")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes running the sweeps, one torch thread each (default: 2 on CPU, 1 on a GPU)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/vtab-demo"))
    parser.add_argument("--cache", type=Path, help="data and backbone cache (default ~/.cache/liera-vision/real-mini)")
    parser.add_argument("--resume", action="store_true", help="keep finished runs in --run-dir instead of retraining")
    backbone = parser.add_argument_group("backbone (default: pre-trained here on letters, cached)")
    backbone.add_argument("--checkpoint", type=Path, help="your own ConvNeXt-V2 weights of --arch instead")
    backbone.add_argument("--random-init", action="store_true", help="no pre-training (shows what it is worth)")
    backbone.add_argument("--arch", default=defaults.arch)
    backbone.add_argument("--source-epochs", type=int, default=defaults.epochs)
    backbone.add_argument("--source-lr", type=float, default=defaults.lr)
    backbone.add_argument("--source-weight-decay", type=float, default=defaults.weight_decay)
    backbone.add_argument("--source-sizes", type=int, nargs=3, metavar=("TRAIN800", "VAL200", "TEST"),
                          help="images per split of the letters source task (default realdata.SOURCE_SIZES)")
    other = parser.add_argument_group("other data")
    other.add_argument("--data-root", type=Path, help="a NOAH-format folder instead of the real-mini suite")
    other.add_argument("--suite", default="real-mini", choices=list(SUITES), help="the registry suite of --tasks")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    try:
        args.methods = [method(m, configs_dir) for m in _csv(args.methods)]
    except ValueError as err:
        parser.error(str(err))
    if not args.methods or not args.seeds:
        parser.error("--methods and --seeds need at least one entry each")
    for key in ("epochs", "image_size", "source_epochs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if args.image_size < 32:
        parser.error(f"--image-size must be >= 32 (ConvNeXt-V2 downsamples 32x), got {args.image_size}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be a positive integer, got {args.workers}")
    for key in ("sizes", "source_sizes"):
        value = getattr(args, key)
        if value is not None and min(value) < 1:
            parser.error(f"--{key.replace('_', '-')} must be three positive counts, got {value}")
    if args.checkpoint and args.random_init:
        parser.error("--checkpoint and --random-init exclude each other")
    if args.data_root is None and args.suite != "real-mini":
        parser.error("--suite other than real-mini needs --data-root (the demo generates only real-mini)")
    tasks = _csv(args.tasks) if args.tasks else (list(TASK_NAMES) if args.data_root is None else None)
    if not tasks:
        parser.error("--data-root needs --tasks")
    if args.data_root is None:
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown:
            parser.error(f"--tasks {unknown} are not real-mini tasks ({', '.join(TASK_NAMES)})")
    else:
        try:
            tasks = [get_task(t).name for t in tasks]
        except ValueError as err:
            parser.error(str(err))
    args.tasks = tasks
    return args


def _workers(requested: int | None) -> int:
    if requested is not None:
        return requested
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def main(argv: list[str] | None = None, configs_dir: str | Path = "configs/vtab") -> int:
    configs_dir = Path(configs_dir)
    args = parse_args(argv, configs_dir)
    start = time.time()
    out = sys.stdout
    quiet_lightning()
    configs = [configs_dir / PROTOCOL, None, configs_dir / DEMO_CONFIG]
    for path in [configs[0], configs[2], *(configs_dir / m.config for m in args.methods)]:
        if not path.is_file():
            print(f"vtab_demo: error: config {path} does not exist (run from the repository root or pass "
                  "configs_dir)", file=sys.stderr)
            return 2
    caught: list = []
    print("liera-vision demo: LieRA vs LoRA, full fine-tuning and a linear probe, VTAB pipeline", file=out)

    # 1. data
    from . import realdata

    stage = time.time()
    if args.data_root is None:
        sizes = dict(zip(realdata.DEFAULT_SIZES, args.sizes))
        cache = args.cache or realdata.default_cache_dir().parent
        data_root = cache / realdata.default_cache_dir(args.image_size, sizes).name
        try:
            realdata.generate(data_root, args.tasks, image_size=args.image_size, sizes=sizes)
        except (ValueError, ImportError, OSError) as err:
            print(f"vtab_demo: error: {err}", file=sys.stderr)
            return 2
        described = ", ".join(f"{t} ({TASKS[t].group}, {TASKS[t].num_classes} classes)" for t in args.tasks)
        print(f"data: real images from scikit-learn / scikit-image, {described}; {sizes['train800']} + "
              f"{sizes['val200']} training and {sizes['test']} test images per task, {args.image_size} px, "
              f"test patches from image regions no training patch touches ({data_root}, "
              f"{time.time() - stage:.0f} s)", file=out)
    else:
        data_root = args.data_root
        print(f"data: {data_root} ({', '.join(args.tasks)})", file=out)

    # 2. backbone
    stage = time.time()
    checkpoint = args.checkpoint
    if args.random_init:
        print(f"backbone: ConvNeXt-V2 {args.arch}, RANDOM-INITIALISED (--random-init): what pre-training is worth "
              "is the difference to a run without this flag", file=out)
    elif checkpoint is None:
        from .pretrain import PretrainSettings, letters_backbone

        settings = PretrainSettings(arch=args.arch, image_size=args.image_size, epochs=args.source_epochs,
                                    lr=args.source_lr, weight_decay=args.source_weight_decay)
        source_sizes = dict(zip(realdata.SOURCE_SIZES, args.source_sizes)) if args.source_sizes else None
        with recorded_warnings(caught), Display(out) as display:
            from .progress import set_sink

            set_sink(display)
            try:
                backbone = letters_backbone(args.cache, settings, sizes=source_sizes,
                                            echo=lambda line: None)
            finally:
                set_sink(None)
        checkpoint = backbone.path
        record = backbone.record
        mean_abs = backbone.mean_abs_weight
        print(f"backbone: ConvNeXt-V2 {args.arch} pre-trained here on letters (26 classes in 4 typefaces, none a "
              f"target class; {record['training']['train_images']} images, {settings.epochs} epochs): "
              f"{100 * record['test_accuracy']:.1f}% test top-1 on held-out letters; mean |W| of the adapted layers "
              f"{mean_abs:.4f} (LieRA's alpha 'auto' gives α/r = 1/mean|W| = {1 / mean_abs:.0f}) "
              f"({'cached' if backbone.cached else f'{time.time() - stage:.0f} s'}: {checkpoint}, record "
              f"{checkpoint.with_suffix('.json').name})", file=out)
    else:
        print(f"backbone: ConvNeXt-V2 {args.arch} from {checkpoint}", file=out)

    # 3. runs
    flags = ["--data.root", str(data_root), "--model.arch", args.arch, "--data.image_size", str(args.image_size),
             "--trainer.max_epochs", str(args.epochs), "--model.lr", str(args.lr)]
    if checkpoint is not None:
        flags += ["--model.checkpoint", str(checkpoint)]
    jobs = []
    for m in sorted(args.methods, key=lambda m: -m.cost):
        for seed in args.seeds:
            run_dir = args.run_dir / m.name / f"seed{seed}"
            if not args.resume and run_dir.exists():
                shutil.rmtree(run_dir)  # every invocation retrains (the data and the backbone are cached)
            jobs.append({"name": m.name, "seed": seed, "run_dir": run_dir, "tasks": args.tasks,
                         "configs": [configs[0], configs_dir / m.config, configs[2]],
                         "extra": [*m.flags, *flags, "--seed_everything", str(seed)]})
    workers = min(_workers(args.workers), len(jobs))
    print(f"runs: {len(args.methods)} methods × {len(args.seeds)} seeds × {len(args.tasks)} tasks = "
          f"{len(jobs) * len(args.tasks)} fine-tunings of {args.epochs} epochs ({workers} worker process"
          f"{'es' if workers > 1 else ''}); each one is", file=out)
    print("  python tools/train_vtab.py fit " + " ".join(
        f"--config {c}" for c in (configs[0], configs_dir / "<method>.yaml", configs[2]))
        + " " + shlex.join(flags) + " --data.task <task> --seed_everything <seed>", file=out)
    print("  methods: " + "; ".join(f"{m.name} = {m.config}{' ' + shlex.join(m.flags) if m.flags else ''}"
                                    for m in args.methods), file=out)
    stage = time.time()
    log_path = args.run_dir / LOG_FILE
    with Display(out) as display:
        results = run_jobs(jobs, workers, display, log_path)
    runs_s = time.time() - stage
    for result in results:
        caught += result["warnings"]
    failed = [f"{r['name']} seed {r['seed']} / {task}" for r in results for task in r["failed"]]

    # 4. report
    from .report import report

    order = {m.name: i for i, m in enumerate(args.methods)}  # the table's columns in the order asked for
    done = [job["run_dir"] for job in sorted(jobs, key=lambda j: (order[j["name"]], j["seed"]))
            if (job["run_dir"] / RESULTS_FILE).is_file()]
    if done:
        markdown, _ = report(done, out_dir=args.run_dir, metrics=("final",))
        print("\n" + markdown, file=out)
        print(f"wrote {args.run_dir / 'vtab_report.md'}, .csv, .png; per-run files under {args.run_dir}/<method>/"
              f"seed<N>/<task>/, Lightning's messages in {log_path}", file=out)
    if caught:
        counts: dict[tuple[str, str], int] = {}
        for item in caught:
            counts[item] = counts.get(item, 0) + 1
        print("warnings (each once):", file=out)
        for (category, message), n in counts.items():
            print(f"  {category}: {message}" + (f" (×{n})" if n > 1 else ""), file=out)
    print(f"demo finished in {time.time() - start:.0f} s (runs {runs_s:.0f} s)", file=out)
    if failed:
        print(f"FAILED: {', '.join(failed)} (details in {log_path}; rerun with --resume to finish them)", file=out)
        return 1
    return 0
