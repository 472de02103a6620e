"""``LieRAConvNeXt``: a ConvNeXt-V2 backbone with LieRA / LoRA / DoRA / PiSSA adapters for MMDetection.

The blocks are timm's (built by :func:`liera_vision.models.create_convnextv2`); they are
arranged under the official ConvNeXt names so that mmdet's ``LearningRateDecayOptimizerConstructor``
(which parses ``backbone.downsample_layers.N`` and ``backbone.stages.N.M``) assigns layer ids:

=========================  =====================================  ==============================
module                     timm name                              official name
=========================  =====================================  ==============================
``downsample_layers.0``    ``stem``                               ``downsample_layers.0``
``downsample_layers.i``    ``stages.i.downsample`` (i = 1..3)     ``downsample_layers.i``
``stages.i.j``             ``stages.i.blocks.j``                  ``stages.i.j``
``norm{i}``                – (new, one per returned stage)        –
=========================  =====================================  ==============================

Adapters (``liera_vision.core``) wrap the selected layers in place, so an adapted conv is
``stages.2.5.conv_dw.base_layer`` + ``.lora_A`` / ``.lora_B``. ``init_cfg=dict(type='Pretrained',
checkpoint=...)`` loads official, FCMAE or timm files through :func:`liera_vision.models.load_checkpoint`
(never mmengine's loader, which would load nothing from an official ``{'model': ...}`` file).
"""

from __future__ import annotations

import re
import warnings

import torch
from mmdet.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import nn

from liera_vision.core import AdapterConfig, adapter_layers, apply_adapters, count_parameters, warn_zero_weights
from liera_vision.models import ARCHS, arch_name, create_convnextv2, load_checkpoint

from .checkpoint import resolve_checkpoint

PRETRAINED_KEYS = {"type", "checkpoint", "prefix"}


def timm_to_plugin_key(key: str) -> str:
    """A timm ConvNeXt-V2 parameter name → the name inside :class:`LieRAConvNeXt` (before adapters)."""
    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
    return re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", key)


@MODELS.register_module()
class LieRAConvNeXt(BaseModule):
    """ConvNeXt-V2 with optional low-rank adapters, returning one normalised feature map per ``out_indices``.

    Args:
        arch: ``atto`` … ``huge`` (or ``convnextv2_<arch>``).
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32).
        drop_path_rate: stochastic depth, linearly increasing over the blocks (timm's rule).
        adapter: an :class:`~liera_vision.core.AdapterConfig` as a dict (e.g.
            ``dict(method='liera', rank=16)``); ``None`` trains the whole backbone.
            With adapters only the adapter parameters, ``adapter['modules_to_save']`` and the
            output norms are trainable.
        frozen_stages: stages ``0 .. frozen_stages-1`` (their downsample layer and blocks,
            adapters included) are frozen and kept in eval mode; ``0`` or ``-1`` freezes nothing.
        init_cfg: ``None`` (timm's random init) or ``dict(type='Pretrained', checkpoint=PATH_OR_URL,
            prefix='')`` with an official ConvNeXt-V2, FCMAE or timm checkpoint. Adapters that
            depend on the weight (PiSSA's factors, DoRA's magnitude) are re-initialised from the
            loaded weights.
    """

    def __init__(self, arch: str = "atto", out_indices=(0, 1, 2, 3), drop_path_rate: float = 0.0,
                 adapter: dict | AdapterConfig | None = None, frozen_stages: int = 0,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=_check_init_cfg(init_cfg))
        self.arch = arch_name(arch)
        dims = ARCHS[self.arch][1]
        self.out_indices = _check_out_indices(out_indices)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f"LieRAConvNeXt: frozen_stages must be an integer in [-1, 4], got {frozen_stages!r}")
        self.frozen_stages = max(frozen_stages, 0)
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"LieRAConvNeXt: drop_path_rate must be in [0, 1), got {drop_path_rate!r}")

        net = create_convnextv2(self.arch, num_classes=0, drop_path_rate=float(drop_path_rate))
        self.downsample_layers = nn.ModuleList([net.stem] + [net.stages[i].downsample for i in range(1, 4)])
        self.stages = nn.ModuleList([net.stages[i].blocks for i in range(4)])

        self.adapter = None
        report = None
        if adapter is not None:
            try:
                self.adapter = AdapterConfig.from_dict(dict(adapter) if not isinstance(adapter, AdapterConfig)
                                                       else adapter.to_dict())
            except (TypeError, ValueError) as err:
                raise ValueError(f"LieRAConvNeXt: invalid adapter config {adapter!r}: {err}") from err
            with warnings.catch_warnings():
                if self.init_cfg is not None:  # these weights are replaced by init_weights: judge those instead
                    warnings.filterwarnings("ignore", message=r".*exactly zero", category=UserWarning)
                _, report = apply_adapters(self, self.adapter)
        # created after apply_adapters (which freezes everything it does not adapt): the output
        # norms are new layers, absent from any pretrained checkpoint, so they always train
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))
        self._freeze_stages()
        self._log_parameters(report)

    # --- forward / train ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> LieRAConvNeXt:
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for p in module.parameters():
                    p.requires_grad_(False)

    def _log_parameters(self, report) -> None:
        count = count_parameters(self)
        how = f"{self.adapter.describe()}, {len(report.layers)} layers adapted" if report else "full fine-tuning"
        print_log(f"LieRAConvNeXt-{self.arch} ({how}; frozen_stages={self.frozen_stages}): "
                  f"trainable backbone parameters {count.trainable:,} / {count.total:,} "
                  f"({100 * count.fraction:.2f}%)", logger="current")

    # --- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint (official / FCMAE / timm) into the backbone, in place.

        mmengine builds the optimizer before it calls ``init_weights``, so parameters are copied
        into, never replaced; adapters are then re-initialised from the loaded weights.
        """
        if self.init_cfg is None or self._is_init:
            self._is_init = True
            return
        spec = self.init_cfg
        path = resolve_checkpoint(spec["checkpoint"])
        plain = create_convnextv2(self.arch, num_classes=0)
        report = load_checkpoint(plain, path, prefix=spec.get("prefix", ""))
        own = self.state_dict(keep_vars=True)
        filled = set()
        with torch.no_grad():
            for key, value in plain.state_dict().items():
                if key.startswith(("head.", "norm_pre.")):
                    continue
                name = timm_to_plugin_key(key)
                if name not in own:  # the layer is wrapped by an adapter
                    module, _, leaf = name.rpartition(".")
                    name = f"{module}.base_layer.{leaf}"
                own[name].copy_(value)
                filled.add(name)
            adapted = adapter_layers(self)
            for layer in adapted.values():
                layer.reset_parameters()  # PiSSA / DoRA depend on the loaded W
        if self.adapter is not None:
            warn_zero_weights(adapted, self.adapter)  # judged at apply time on the random weights: muted there
        # every backbone tensor must come from the checkpoint (a silent partial load is a bug), except
        # what no checkpoint has: the adapters' own tensors and the output norms
        new = {f"{name}.{key}" for name, layer in adapted.items() for key in layer.state_dict()
               if not key.startswith("base_layer.")}
        unfilled = [k for k in own if k not in filled and k not in new and not re.match(r"norm\d\.", k)]
        if unfilled:
            raise RuntimeError(f"LieRAConvNeXt: {path} left backbone tensors unset: {unfilled[:8]}")
        print_log(f"LieRAConvNeXt-{self.arch}: {report}", logger="current")
        self._is_init = True


def _check_out_indices(out_indices) -> tuple[int, ...]:
    items = list(out_indices) if isinstance(out_indices, (list, tuple)) else None
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or not -4 <= i < 4 for i in items) \
            or len({i % 4 for i in items}) != len(items):
        raise ValueError(f"LieRAConvNeXt: out_indices must be distinct stage indices in 0..3, got {out_indices!r}")
    return tuple(sorted(i % 4 for i in items))


def _check_init_cfg(init_cfg):
    if init_cfg is None:
        return None
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained":
        raise ValueError("LieRAConvNeXt: init_cfg must be None (timm's random init) or "
                         f"dict(type='Pretrained', checkpoint=..., prefix=''), got {init_cfg!r}")
    unknown = sorted(set(init_cfg) - PRETRAINED_KEYS)
    if unknown or not init_cfg.get("checkpoint"):
        raise ValueError(f"LieRAConvNeXt: init_cfg {dict(init_cfg)!r} needs a 'checkpoint' and accepts only "
                         f"{sorted(PRETRAINED_KEYS)} (unknown: {unknown})")
    return dict(init_cfg)
