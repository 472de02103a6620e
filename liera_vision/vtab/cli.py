"""The VTAB-1k command line: LightningCLI over :class:`VTABClassifier` and :class:`VTABDataModule`.

``fit`` trains, then tests the final weights on the protocol's evaluation split and writes
``<trainer.default_root_dir>/result.json`` (atomically) and, for adapter runs, the adapter file
``adapter.safetensors``. ``validate`` / ``test`` / ``predict`` are LightningCLI's.

Defaults beyond the classes' own: ``trainer.default_root_dir`` = ``runs/vtab/<run_name>/<task>``
(``run_name`` defaults to the method, e.g. ``liera-taylor-r8``; ``<task>`` is the registry name, an
alias such as ``cifar100`` resolves), checkpoints in its ``checkpoints/`` (``last.ckpt`` after every
epoch, for ``--ckpt_path`` resumption), ``trainer.max_epochs`` 100, an evaluation every 10 epochs,
and Lightning's default logger (TensorBoard, in ``<default_root_dir>/lightning_logs/``).

Configs compose: ``--config`` may be repeated, later files override earlier ones and flags override
files (the protocol first, then a method: ``configs/vtab/protocol/vtab1k.yaml``, ``configs/vtab/liera_r8.yaml``).

    python tools/train_vtab.py fit --config configs/vtab/protocol/vtab1k.yaml --config configs/vtab/liera_r8.yaml \
        --data.root data/vtab-1k --data.task dtd

A user error (bad data, a missing file, a value the classes refuse) ends the command with one line
``error: <message>`` and exit status 1; ``LIERA_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from argparse import ArgumentError
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from liera_vision.core import AdapterConfig, save_adapter

from .data import VTABDataModule
from .module import VTABClassifier
from .results import RESULT_FILE, write_json_atomic
from .tasks import canonical_name, find_task


def method_name(finetune: str, adapter: dict | None) -> str:
    """``liera-taylor-r8``, ``dora+liera-taylor-r16``, ``lora-r8``, ``full``, ``linear``."""
    if finetune != "adapter":
        return finetune
    return AdapterConfig.from_dict(dict(adapter)).name if adapter else AdapterConfig().name


def result_record(model: VTABClassifier, data: VTABDataModule, trainer, *, method: str, seed, resumed_from,
                  wall_s: float) -> dict:
    """One finished run: final and best-over-evaluations accuracy and everything needed to trust them."""
    final = model.test_accuracy
    evaluations = [[epoch, acc] for epoch, acc in model.eval_history]
    best_epoch, best = max(((e, a) for e, a in evaluations), key=lambda ea: ea[1], default=(None, final))
    if final is not None and final >= best:
        best_epoch, best = "final", final
    count = model.parameter_count
    hp = model.hparams
    task = find_task(data.task)
    return {
        "method": method, "task": data.task, "group": task.group if task else None,
        "suite": task.suite if task else None, "num_classes": data.num_classes,
        "acc_final": final, "acc_best": best, "best_epoch": best_epoch, "evaluations": evaluations,
        "protocol": data.protocol, "train_split": data.train_split, "eval_split": data.eval_split,
        "arch": hp.arch, "finetune": hp.finetune,
        "adapter": model.adapter_config.to_dict() if model.adapter_config is not None else None,
        "pretrained": hp.pretrained, "checkpoint": hp.checkpoint, "random_init": model.random_init,
        "lr": hp.lr, "weight_decay": hp.weight_decay, "batch_size": data.batch_size, "image_size": data.image_size,
        "epochs": trainer.current_epoch, "max_epochs": trainer.max_epochs,
        "trainable_params": count.trainable, "total_params": count.total,
        "seed": seed, "devices": trainer.world_size, "precision": str(trainer.precision),
        "resumed_from": str(resumed_from) if resumed_from else None, "wall_s": round(wall_s, 1),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "root": str(trainer.default_root_dir),
    }


class VTABCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the module owns the protocol's optimizer
        # a bad flag or value raises ArgumentError (main prints it in one line) instead of printing the whole usage
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        for key in ("exit_on_error", *self.subcommands()):
            parser_kwargs.setdefault(key, False if key == "exit_on_error" else {"exit_on_error": False})
        self._start = time.time()
        super().__init__(VTABClassifier, VTABDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="label of the method in result files and the run folder (default: the method, "
                                 "e.g. liera-taylor-r8)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True, "checkpoint.save_on_train_epoch_end": True,
            "trainer.max_epochs": 100, "trainer.check_val_every_n_epoch": 10,
        })
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        adapter = cfg.model.adapter.as_dict() if hasattr(cfg.model.adapter, "as_dict") else cfg.model.adapter
        self.run_name = cfg.run_name or method_name(cfg.model.finetune, adapter)
        cfg.data.task = canonical_name(cfg.data.task)  # the folder, the data module and result.json agree
        if cfg.trainer.default_root_dir is None:
            cfg.trainer.default_root_dir = str(Path("runs/vtab") / self.run_name / cfg.data.task)
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = str(Path(cfg.trainer.default_root_dir) / "checkpoints")

    def after_fit(self) -> None:
        trainer, model, data = self.trainer, self.model, self.datamodule
        trainer.test(model, datamodule=data)
        if not trainer.is_global_zero:
            return
        root, cfg = Path(trainer.default_root_dir), self._cfg()
        if model.adapter_config is not None:
            save_adapter(model.model, root / "adapter.safetensors")
        record = result_record(model, data, trainer, method=self.run_name, seed=cfg.get("seed_everything"),
                               resumed_from=cfg.get("ckpt_path"), wall_s=time.time() - self._start)
        path = write_json_atomic(root / RESULT_FILE, record)
        rank_zero_info(f"{self.run_name} on {data.task}: top-1 {100 * record['acc_final']:.2f}% final, "
                       f"{100 * record['acc_best']:.2f}% best over evaluations ({data.eval_split}); "
                       f"wrote {path}")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error re-raised from a DataLoader worker carries the worker's
    traceback in its message; its last line is the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:  # "...\nliera_vision.vtab.data.VTABDataError: <message>"
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return " ".join(text.split())


def main(args: list[str] | None = None) -> None:
    """``train_vtab.py``: LightningCLI's subcommands; a user error ends it with one line (see the module docstring)."""
    try:
        VTABCLI(args=args)
    except ArgumentError as err:  # a bad flag or value (jsonargparse)
        if os.environ.get("LIERA_TRACEBACK"):
            raise
        sys.exit(f"error: {one_line(err)} (the options: train_vtab.py <subcommand> --help)")
    except (ValueError, OSError) as err:  # bad data, a missing file, a refused value: the message names it
        if os.environ.get("LIERA_TRACEBACK"):
            raise
        sys.exit(f"error: {one_line(err)}")


if __name__ == "__main__":
    main()
