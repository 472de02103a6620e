"""VTABClassifier: a timm ConvNeXt-V2, adapted with the core adapters (or fully / linearly tuned), as a LightningModule.

Training follows the VTAB-1k protocol of the LieRA paper's experiments (arXiv:2504.00851; the
values are in ``configs/vtab/protocol/vtab1k.yaml``): cross-entropy, AdamW (lr 1e-3, weight decay
1e-4), a linear warm-up from 1e-6 over 10 epochs then cosine decay to 1e-5, stepped per batch.
Top-1 accuracy comes from torchmetrics; every evaluation during ``fit`` is kept in
``eval_history`` so that both the final and the best-over-evaluations accuracy can be reported.

Checkpoints carry only what trains (adapters, head, optimizer state) plus a fingerprint of the
frozen weights: a LieRA checkpoint of ConvNeXt-V2-B is a few MB instead of 350 MB, and resuming
onto a different frozen backbone is refused instead of silently producing a different model.
The fingerprint is taken once, from the weights as built (before Lightning casts the module to a
``*-true`` precision), so it is the same under every precision: a ``bf16-true`` run resumes.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from liera_vision.core import AdapterConfig, apply_adapters, count_parameters, name_matches
from liera_vision.errors import RandomInitWarning
from liera_vision.models import build_convnextv2

FINETUNE = ("adapter", "full", "linear")
FINGERPRINT_KEY = "liera_frozen_fingerprint"


def warmup_cosine_lr(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float,
                     min_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _with_head(config: AdapterConfig) -> AdapterConfig:
    """The task head is new for every task, so it always trains (as PEFT does for classification heads)."""
    if any(name_matches(p, "head") or name_matches(p, "head.fc") for p in config.modules_to_save):
        return config
    return dataclasses.replace(config, modules_to_save=[*config.modules_to_save, "head"])


def adapter_hparams(config: AdapterConfig) -> dict:
    """``config`` as the command line takes it: LightningCLI parses a checkpoint's hyper-parameters again on
    ``--ckpt_path``, so they hold :class:`AdapterConfig`'s fields only (``to_dict`` without its ``"version"``;
    ``AdapterConfig.from_dict`` reads both)."""
    fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    return {key: value for key, value in config.to_dict().items() if key in fields}


class VTABClassifier(L.LightningModule):
    """ConvNeXt-V2 classifier for one VTAB-1k task.

    Args:
        arch: ConvNeXt-V2 size (``atto`` … ``huge``; the paper uses ``base``).
        num_classes: classes of the task (the CLI links it from the data module).
        finetune: ``adapter`` (core adapters from ``adapter`` + the head), ``full`` (every parameter)
            or ``linear`` (a linear probe: ``head.fc`` only).
        adapter: the :class:`~liera_vision.core.AdapterConfig` for ``finetune="adapter"`` (default:
            LieRA, Taylor, rank 8). ``head`` is added to its ``modules_to_save``.
        pretrained: a timm pretrained tag (``fcmae_ft_in22k_in1k`` …; needs the Hugging Face hub).
        checkpoint: a local ConvNeXt-V2 file (official, FCMAE or timm layout). Without this or
            ``pretrained`` the backbone is random-initialised (and a warning says so).
        drop_path_rate: stochastic depth of the backbone.
        lr, weight_decay: AdamW's.
        warmup_epochs, warmup_lr, min_lr: the schedule (see :func:`warmup_cosine_lr`).
        label_smoothing: for the cross-entropy.
    """

    def __init__(self, arch: str = "base", num_classes: int | None = None,
                 finetune: Literal["adapter", "full", "linear"] = "adapter", adapter: AdapterConfig | None = None,
                 pretrained: str | None = None, checkpoint: str | None = None, drop_path_rate: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 1e-4, warmup_epochs: float = 10, warmup_lr: float = 1e-6,
                 min_lr: float = 1e-5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"VTABClassifier.num_classes must be >= 2, got {num_classes!r} "
                             "(the CLI takes it from the data module's task)")
        if finetune not in FINETUNE:
            raise ValueError(f"VTABClassifier.finetune must be one of {FINETUNE}, got {finetune!r}")
        if isinstance(adapter, dict):  # from a checkpoint's hyper-parameters
            adapter = AdapterConfig.from_dict(adapter)
        if finetune != "adapter" and adapter is not None:
            raise ValueError(f"VTABClassifier: adapter is set but finetune={finetune!r}; "
                             "use finetune='adapter' or adapter=None")
        if finetune == "adapter":
            adapter = _with_head(adapter or AdapterConfig())
        if not 0 <= warmup_lr <= lr or not 0 <= min_lr <= lr:
            raise ValueError(f"VTABClassifier: expected 0 <= warmup_lr ({warmup_lr}) <= lr ({lr}) "
                             f"and 0 <= min_lr ({min_lr}) <= lr")
        self.save_hyperparameters(ignore=["adapter"])
        self.hparams["adapter"] = adapter_hparams(adapter) if adapter is not None else None

        self.model, checkpoint_report = build_convnextv2(arch, num_classes, pretrained=pretrained,
                                                         checkpoint=checkpoint, drop_path_rate=drop_path_rate)
        self.random_init = not (pretrained or checkpoint)
        if self.random_init:
            rank_zero_warn(f"no model.pretrained tag or model.checkpoint given: the ConvNeXt-V2 {arch} backbone is "
                           "RANDOM-INITIALISED; accuracies will be far below pretrained ones",
                           category=RandomInitWarning)
        elif checkpoint is not None:
            rank_zero_info(str(checkpoint_report))
        self.adapter_config = adapter
        self.report = None
        if finetune == "adapter":
            self.model, self.report = apply_adapters(self.model, adapter)
        elif finetune == "linear":
            self.model.requires_grad_(False)
            self.model.head.fc.requires_grad_(True)
        self.method = adapter.name if adapter is not None else finetune
        # the frozen weights as built: Lightning may cast the module later (16-true, bf16-true, 64-true)
        self._built_fingerprint = self.frozen_fingerprint()

        self.train_loss = MeanMetric()  # metrics synchronise across processes when computed
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_history: list[tuple[int, float]] = []  # (epoch, accuracy) of every evaluation during fit
        self.test_accuracy: float | None = None

    @property
    def parameter_count(self):
        return count_parameters(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- steps ---------------------------------------------------------------------------------
    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing), logits, y

    def parameter_summary(self) -> dict[str, int]:
        """Counts for logs: ``trainable_params``, ``total_params`` and, for adapter runs, ``adapted_layers`` and
        ``adapter_params`` (the adapters alone, without ``modules_to_save``)."""
        count = self.parameter_count
        out = {"trainable_params": count.trainable, "total_params": count.total}
        if self.report is not None:
            out |= {"adapted_layers": len(self.report.layers), "adapter_params": self.report.adapter_params}
        return out

    def on_fit_start(self) -> None:
        counts = self.parameter_summary()
        line = (f"{self.method}: trainable parameters {counts['trainable_params']:,} / {counts['total_params']:,} "
                f"({100 * counts['trainable_params'] / max(counts['total_params'], 1):.3f}%)")
        if self.report is not None:
            line += f"; {counts['adapted_layers']} layers adapted, {counts['adapter_params']:,} adapter parameters"
        rank_zero_info(line)
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self._loss(batch)
        self.train_acc(logits, y)
        self.train_loss(loss)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._loss(batch)
        self.eval_acc.update(logits, y)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        acc = float(self.eval_acc.compute())  # synchronised across processes
        self.eval_acc.reset()
        if not self.trainer.sanity_checking:
            self.eval_history.append((self.current_epoch, acc))
            self.log("val/acc_best", max(a for _, a in self.eval_history), sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)  # equal on every rank: the sync is a no-op mean

    def test_step(self, batch, batch_idx: int) -> None:
        _, logits, y = self._loss(batch)
        self.test_acc.update(logits, y)

    def on_test_epoch_end(self) -> None:
        self.test_accuracy = float(self.test_acc.compute())
        self.test_acc.reset()
        self.log("test/acc", self.test_accuracy, sync_dist=True)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        if str(self.trainer.precision) == "16-true":
            raise ValueError(
                "trainer.precision='16-true' cannot train here: it keeps the weights and AdamW's state in float16, "
                "where AdamW's eps (1e-8) rounds to 0, so a parameter whose gradient is still zero (every LoRA / "
                "LieRA factor A at the first step) becomes 0/0 = NaN. Train with 16-mixed (float16 compute, "
                "float32 weights), bf16-mixed or bf16-true; validate / test / predict run under 16-true")
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)  # also loads the train loader
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        schedule = partial(warmup_cosine_lr, total_steps=total, warmup_steps=round(hp.warmup_epochs * per_epoch),
                           lr=hp.lr, warmup_lr=hp.warmup_lr, min_lr=hp.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) / hp.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints: trainable state only, frozen weights fingerprinted -----------------------
    def _frozen_names(self) -> list[str]:
        return sorted(name for name, p in self.named_parameters() if not p.requires_grad)

    def frozen_fingerprint(self) -> torch.Tensor:
        """``(sum, sum of |·|)`` of every frozen parameter (sorted by name) as they are now, float64, shape
        ``(frozen parameters, 2)``: cheap, sensitive to any change. Checkpoints store (and compare) the one taken
        when the model was built, which no precision cast has touched."""
        params = dict(self.named_parameters())
        rows = [torch.stack([params[n].detach().double().sum(), params[n].detach().double().abs().sum()]).cpu()
                for n in self._frozen_names()]
        return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = self._frozen_names()
        dropped = set(frozen)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in dropped}
        checkpoint[FINGERPRINT_KEY] = {"names": frozen, "values": self._built_fingerprint}
        checkpoint["eval_history"] = [list(item) for item in self.eval_history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        try:
            precision = self.trainer.precision_plugin
        except RuntimeError:  # not attached to a Trainer (e.g. load_from_checkpoint)
            precision = None
        if precision is not None:
            # Lightning restores the weights before its precision plugin casts the module (64-true, 16-true,
            # bf16-true); cast first, or the saved tensors would pass through float32 (64-true loses digits)
            precision.convert_module(self)
        saved = checkpoint.get(FINGERPRINT_KEY)
        if saved is not None:
            names = self._frozen_names()
            if saved["names"] != names:
                raise ValueError(f"checkpoint freezes {len(saved['names'])} parameters, this model {len(names)}: "
                                 "it was trained with another finetune / adapter setting")
            if not torch.allclose(saved["values"].double(), self._built_fingerprint, rtol=1e-6, atol=1e-6):
                hint = (" The backbone is random-initialised: re-create it with the same seed (seed_everything)."
                        if self.random_init else " Load the same model.pretrained / model.checkpoint.")
                raise ValueError("checkpoint was trained on different frozen weights than this model's." + hint)
            own = self.state_dict()
            for name in names:
                checkpoint["state_dict"].setdefault(name, own[name])
        self.eval_history = [(int(e), float(a)) for e, a in checkpoint.get("eval_history", [])]
