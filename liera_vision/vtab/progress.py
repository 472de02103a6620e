"""One progress bar per training run (all epochs in one bar), for the demo and the pre-training.

Lightning's default bar starts a new line per epoch and per evaluation; a demo with dozens of short
runs wants one line each. :class:`RunProgressBar` is a Lightning ``ProgressBar`` (so it replaces
the default one) drawing a single tqdm bar over every training batch of the run, with the loss and
the latest evaluation accuracy, and the test accuracy once the run is tested. When the stream is
not a terminal (a log file, CI) it draws nothing and writes one line per run when it ends.

    python tools/train_vtab.py fit ... --trainer.callbacks+=liera_vision.vtab.progress.RunProgressBar

With a sink set (:func:`set_sink`, e.g. the demo's, possibly in a worker process) the bar draws
nothing itself and sends events to it instead: ``("start", key, label, total_steps)``,
``("advance", key, steps, status)``, ``("end", key, status, seconds)``; ``key`` is unique per run.
"""

from __future__ import annotations

import math
import os
import sys
import time

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

_SINK = None


def set_sink(sink) -> None:
    """Send the events of every :class:`RunProgressBar` of this process to ``sink(event)`` (``None``: draw)."""
    global _SINK
    _SINK = sink


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class RunProgressBar(ProgressBar):
    """A single bar per run.

    Args:
        label: text in front of the bar; default ``"<method> · <task> · seed <N>"`` from the module,
            the data module and ``seed_everything``.
        stream: where to draw (default ``sys.stderr`` at the time the run starts).
    """

    def __init__(self, label: str | None = None, stream=None) -> None:
        super().__init__()
        self.label = label
        self.stream = stream
        self._enabled = True
        self._bar = None
        self._start = 0.0
        self._done = False
        self._key = None
        self._pending = 0

    # --- ProgressBar's switch ------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    # --- helpers -------------------------------------------------------------------------------
    def describe(self, trainer, pl_module) -> str:
        if self.label is not None:
            return self.label
        parts = [str(getattr(pl_module, "method", type(pl_module).__name__))]
        task = getattr(trainer.datamodule, "task", None) if trainer.datamodule is not None else None
        if task:
            parts.append(str(task))
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            parts.append(f"seed {seed}")
        return " · ".join(parts)

    def _stream(self):
        return self.stream if self.stream is not None else sys.stderr

    def _postfix(self, trainer, test: bool = False) -> str:
        metrics = trainer.callback_metrics
        items = []
        loss = _value(metrics, "train/loss")
        if loss is not None and not test:
            items.append(f"loss {loss:.3f}")
        val = _value(metrics, "val/acc")
        if val is not None:
            items.append(f"eval {100 * val:.1f}%")
        acc = _value(metrics, "test/acc")
        if test and acc is not None:
            items.append(f"test top-1 {100 * acc:.1f}%")
        return ", ".join(items)

    # --- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._done = time.time(), False
        if not (self._enabled and trainer.is_global_zero):
            return
        per_epoch = self.total_train_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        total = None if math.isinf(per_epoch) else int(per_epoch * epochs)
        if _SINK is not None:
            self._key = f"{os.getpid()}-{id(self)}-{self._start}"
            _SINK(("start", self._key, self.describe(trainer, pl_module), total))
            if trainer.global_step:
                _SINK(("advance", self._key, trainer.global_step, ""))
            return
        stream = self._stream()
        if not (hasattr(stream, "isatty") and stream.isatty()):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=min(trainer.global_step, total or trainer.global_step),
                         desc=self.describe(trainer, pl_module), file=stream, dynamic_ncols=True, leave=True,
                         unit="step", bar_format="{desc} {bar} {n_fmt}/{total_fmt} {elapsed}{postfix}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._key is not None:
            self._pending += 1
            if self._pending >= 2 or batch_idx + 1 == self.total_train_batches:  # fewer events, same picture
                _SINK(("advance", self._key, self._pending, self._postfix(trainer)))
                self._pending = 0
        if self._bar is not None:
            self._bar.update(1)
            if batch_idx % 4 == 0:
                self._bar.set_postfix_str(self._postfix(trainer), refresh=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._bar is not None and not trainer.sanity_checking:
            self._bar.set_postfix_str(self._postfix(trainer))

    def on_test_start(self, trainer, pl_module) -> None:
        if not self._start:  # a test without a fit before it (``train_vtab.py test``)
            self._start = time.time()

    def on_test_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, test=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(trainer))
            self._bar.refresh()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        running = self._bar is not None or self._key is not None
        if stage == "fit" and running and not self._done and trainer.state.status == "interrupted":
            self._finish(trainer, pl_module, test=False)

    def _finish(self, trainer, pl_module, test: bool) -> None:
        if self._done or not (self._enabled and trainer.is_global_zero):
            return
        self._done = True
        text = self._postfix(trainer, test=test)
        if self._key is not None:
            if self._pending:
                _SINK(("advance", self._key, self._pending, text))
            _SINK(("end", self._key, text, time.time() - self._start))
            self._key, self._pending = None, 0
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text)
            self._bar.close()
            self._bar = None
        else:
            print(f"{self.describe(trainer, pl_module)}: {text} ({time.time() - self._start:.0f} s)",
                  file=self._stream(), flush=True)
