"""The logic of ``tools/train_coco.py`` / ``test_coco.py`` / ``merge_backbone.py``: mmdet's tools' flags.

Train and test build an mmengine ``Runner`` from a config; the ``*_main`` functions take ``argv``
so tests can call them in-process, and raise. :func:`run` is what the scripts call: a user error
(a bad path, config, ``--cfg-options`` value or checkpoint; ``ValueError`` / ``OSError``) becomes
one line on stderr and exit status 1 (``LIERA_VISION_TRACEBACK=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import sys
from collections.abc import Callable

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from liera_vision.core import count_parameters

CFG_OPTIONS_HELP = ("override settings of the config: key=value pairs merged into it, e.g. "
                    "train_cfg.max_epochs=24 'model.backbone.adapter.rank=32'; lists as key=\"[a,b]\"")
# what the config machinery raises for a config or an option it cannot use (mmengine's Config,
# its registries and the classes they build)
CONFIG_ERRORS = (KeyError, TypeError, ValueError, AttributeError, AssertionError, SyntaxError, ImportError, OSError)


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; a user error exits with status 1 and one line ``<prog>: error: <message>`` on stderr."""
    prog = osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "liera-vision"
    try:
        main(argv)
    except (ValueError, OSError) as err:
        if os.environ.get("LIERA_VISION_TRACEBACK"):
            raise
        sys.exit(f"{prog}: error: {one_line(err)}")


def one_line(err: BaseException, limit: int = 600) -> str:
    """The message of ``err`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    text = re.sub(r"\s+", " ", str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)).strip()
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    text = text or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` with a usage error (not a traceback) for an item that is not ``key=value``."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values or []:
            if "=" not in item or item.startswith("="):
                parser.error(f"{option_string}: {item!r} is not key=value")
        try:
            super().__call__(parser, namespace, values, option_string)
        except (ValueError, AssertionError) as err:
            parser.error(f"{option_string}: cannot parse {' '.join(values)!r}: {one_line(err)}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-options", nargs="+", action=CfgOptionsAction, help=CFG_OPTIONS_HELP)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (tools/dist_train.sh and dist_test.sh use 'pytorch' through torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def read_config(path: str, cfg_options: dict | None = None) -> Config:
    """``Config.fromfile(path)`` merged with ``--cfg-options``; ``ValueError`` / ``FileNotFoundError`` if it fails."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        cfg = Config.fromfile(path)
    except CONFIG_ERRORS as err:
        raise ValueError(f"config {path}: {one_line(err)}") from err
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except CONFIG_ERRORS as err:
            raise ValueError(f"--cfg-options {' '.join(f'{k}={v}' for k, v in cfg_options.items())}: "
                             f"{one_line(err, 300)}") from err
    return cfg


def _load_config(args) -> Config:
    cfg = read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:  # CLI > config > ./work_dirs/<config name>
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.launcher != "none":  # mmengine's launchers read it; a plain run must not leak it to later processes
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return cfg


def _build_runner(cfg: Config) -> Runner:
    from mmdet.utils import setup_cache_size_limit_of_dynamo

    setup_cache_size_limit_of_dynamo()
    if "runner_type" not in cfg:  # reads mmengine's checkpoints under torch >= 2.6, refuses ones that do not fit
        cfg.runner_type = "CheckedRunner"
    try:  # builds the model (and the registries' classes): errors here come from the config
        return RUNNERS.build(cfg)
    except (KeyError, TypeError, AttributeError, AssertionError) as err:
        raise ValueError(f"config {cfg.filename}: cannot build the runner: {one_line(err)}") from err


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train an MMDetection detector (e.g. a configs/coco config)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="directory for logs and checkpoints (default ./work_dirs/<config name>)")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper; needs a GPU)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the lr by (GPUs x batch) / auto_scale_lr.base_batch_size")
    parser.add_argument("--resume", nargs="?", type=str, const="auto",
                        help="resume from this checkpoint; without a path, from the latest one in the work dir")
    _common(parser)
    return parser


def train_main(argv: list[str] | None = None) -> Runner:
    args = train_parser().parse_args(argv)
    cfg = _load_config(args)
    if args.amp:
        if not torch.cuda.is_available():
            raise ValueError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); none is available here")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        if "base_batch_size" not in cfg.get("auto_scale_lr", {}):
            raise ValueError(f"--auto-scale-lr: {args.config} has no auto_scale_lr.base_batch_size")
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f"--resume: checkpoint {args.resume} does not exist")
        cfg.resume, cfg.load_from = True, args.resume
    runner = _build_runner(cfg)
    count = count_parameters(runner.model)
    print_log(f"detector: trainable parameters {count.trainable:,} / {count.total:,} ({100 * count.fraction:.2f}%)",
              logger="current")
    runner.train()
    return runner


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Test (and evaluate) an MMDetection detector")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="directory for the metrics file (default ./work_dirs/<config name>)")
    parser.add_argument("--out", help="dump predictions to this .pkl file for offline evaluation")
    parser.add_argument("--show", action="store_true", help="show predictions in a window")
    parser.add_argument("--show-dir", help="save painted predictions under work_dir/<timestamp>/<show-dir>")
    parser.add_argument("--wait-time", type=float, default=2, help="seconds each image is shown with --show")
    _common(parser)
    return parser


def test_main(argv: list[str] | None = None) -> dict:
    args = test_parser().parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    if args.out is not None and not args.out.endswith((".pkl", ".pickle")):
        raise ValueError(f"--out {args.out}: predictions are dumped as a pickle; use a .pkl file name")
    cfg = _load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook

        cfg = trigger_visualization_hook(cfg, args)
    runner = _build_runner(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner.test()


def merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fold the backbone adapters of a trained detector into its weights; the output loads into "
                    "the same config without adapters (e.g. --cfg-options model.backbone.adapter=None)")
    parser.add_argument("config", help="the (adapted) config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="trained checkpoint (e.g. work_dirs/<config>/epoch_12.pth)")
    parser.add_argument("out", help="output checkpoint path (.pth)")
    parser.add_argument("--cfg-options", nargs="+", action=CfgOptionsAction, help=CFG_OPTIONS_HELP)
    return parser


def merge_main(argv: list[str] | None = None):
    from .merge import merge_backbone

    args = merge_parser().parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    try:
        return merge_backbone(cfg, args.checkpoint, args.out)
    except (KeyError, TypeError, AttributeError, AssertionError) as err:  # building the config's model
        raise ValueError(f"config {args.config}: cannot build the model: {one_line(err)}") from err
