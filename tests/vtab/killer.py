"""A Lightning callback that simulates a crash (used by the sweep test through --trainer.callbacks)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAtEpoch(Callback):
    """SIGKILL the whole process group (sweep + task) when ``task`` starts ``epoch``, once (``marker`` remembers)."""

    def __init__(self, task: str, epoch: int, marker: str) -> None:
        self.task, self.epoch, self.marker = task, epoch, Path(marker)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.datamodule.task == self.task and trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.write_text(f"killed {self.task} at the start of epoch {self.epoch}\n")
            os.killpg(os.getpgid(0), signal.SIGKILL)


class Interrupted(RuntimeError):
    """What :class:`StopAtEpoch` raises: a run stopped from outside (not a user error, so it keeps its traceback)."""


class StopAtEpoch(Callback):
    """Raise :class:`Interrupted` when training reaches ``epoch``: the run stops as after a crash, its
    ``last.ckpt`` holding the epochs before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Interrupted(f"stopped at the start of epoch {self.epoch}")
