"""The logic of ``tools/train_coco.py`` / ``tools/test_coco.py``: mmdet's ``tools/train.py`` / ``test.py`` flags.

Both build an mmengine ``Runner`` from a config; the functions take ``argv`` so tests can call
them in-process.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from liera_vision.core import count_parameters

CFG_OPTIONS_HELP = ("override settings of the config: key=value pairs merged into it, e.g. "
                    "train_cfg.max_epochs=24 'model.backbone.adapter.rank=32'; lists as key=\"[a,b]\"")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help=CFG_OPTIONS_HELP)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (tools/dist_train.sh and dist_test.sh use 'pytorch' through torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def _load_config(args) -> Config:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"config {args.config} does not exist")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
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
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


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
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help=CFG_OPTIONS_HELP)
    return parser


def merge_main(argv: list[str] | None = None):
    from .merge import merge_backbone

    args = merge_parser().parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"config {args.config} does not exist")
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    return merge_backbone(args.config, args.checkpoint, args.out, cfg_options=args.cfg_options)
