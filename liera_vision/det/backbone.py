"""``LieRAConvNeXt``: a ConvNeXt-V2 backbone with LieRA / LoRA / DoRA / PiSSA adapters for MMDetection.

The blocks are timm's (built by :func:`liera_vision.models.create_convnextv2`); they are
arranged under the official ConvNeXt names so that mmdet's ``LearningRateDecayOptimizerConstructor``
(``mmdet/engine/optimizers/layer_decay_optimizer_constructor.py``, which parses
``backbone.downsample_layers.N`` and ``backbone.stages.N.M``) assigns layer ids:

=========================  =====================================  ==============================
module                     timm name                              official name
=========================  =====================================  ==============================
``downsample_layers.0``    ``stem``                               ``downsample_layers.0``
``downsample_layers.i``    ``stages.i.downsample`` (i = 1..3)     ``downsample_layers.i``
``stages.i.j``             ``stages.i.blocks.j``                  ``stages.i.j``
``norm{i}``                – (new, one per returned stage)        –
=========================  =====================================  ==============================

Only the stages up to the last of ``out_indices`` are built (later ones would run for nothing and
leave trainable parameters outside the graph, which DDP refuses). Adapters
(``liera_vision.core``) wrap the selected layers in place, so an adapted conv is
``stages.2.5.conv_dw.base_layer`` + ``.lora_A`` / ``.lora_B``. ``init_cfg=dict(type='Pretrained',
checkpoint=..., prefix=...)`` loads official, FCMAE or timm files through
:func:`liera_vision.models.load_checkpoint`, and this backbone's own tensors (a detector
checkpoint, with or without adapters) directly; never through mmengine's initializer, which
would load nothing from an official ``{'model': ...}`` file.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import torch
from mmdet.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    adapter_layers,
    apply_adapters,
    count_parameters,
    get_adapter_config,
    model_transaction,
    reset_adapters,
    warn_zero_weights,
)
from liera_vision.errors import CheckpointWarning, ZeroWeightWarning
from liera_vision.models import (
    ARCHS,
    arch_name,
    create_convnextv2,
    load_checkpoint,
    read_state_dict,
    select_prefix,
    unwrap_state_dict,
)

from .checkpoint import load_local_checkpoint, resolve_checkpoint

PRETRAINED_KEYS = {"type", "checkpoint", "prefix"}
# this backbone's own layout: official outer names, timm's inner ones, output norms
PLUGIN_KEY = re.compile(r"^(stages\.\d+\.\d+\.(conv_dw|mlp)\.|norm\d\.)")
STAGE_KEY = re.compile(r"^(downsample_layers|stages)\.(\d+)\.")


class _Trunk(nn.Module):
    """The first ``num_stages`` stages of a timm ConvNeXt under the official names (modules shared, not copied)."""

    def __init__(self, net: nn.Module, num_stages: int) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([net.stem] + [net.stages[i].downsample for i in range(1, num_stages)])
        self.stages = nn.ModuleList([net.stages[i].blocks for i in range(num_stages)])


@dataclass
class BackboneLoad:
    """What :meth:`LieRAConvNeXt.load_pretrained` did; ``str()`` is the INFO block init_weights logs."""

    source: str
    format: str  # "LieRAConvNeXt" (a detector checkpoint) or the layout load_checkpoint found
    loaded: list[str] = field(default_factory=list)  # backbone keys now holding checkpoint tensors
    adapters: str = "none"  # "loaded" (from the file) | "initialised" (identity, from the loaded W) | "none"
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file keys dropped on purpose
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone cannot place (warned)
    fresh: list[str] = field(default_factory=list)  # backbone keys the file lacks, left at their init (norms)
    conversion: str = ""  # load_checkpoint's report, for official / FCMAE / timm files

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.format} checkpoint, {len(self.loaded)} backbone tensors loaded; "
                 f"adapters {self.adapters}"]
        if self.conversion:
            lines += ["  " + line for line in self.conversion.splitlines()]
        for reason, keys in self.dropped.items():
            lines.append(f"  dropped ({reason}): {len(keys)} tensors: {_listing(keys)}")
        if self.fresh:
            lines.append(f"  not in the file, initialised fresh ({len(self.fresh)}): {_listing(self.fresh)}")
        if self.unexpected:
            lines.append(f"  not loaded, no place in the backbone ({len(self.unexpected)}): "
                         f"{_listing(self.unexpected)}")
        return "\n".join(lines)


def _listing(keys: list[str], limit: int = 8) -> str:
    return f"{', '.join(keys[:limit])}{' …' if len(keys) > limit else ''}"


@MODELS.register_module()
class LieRAConvNeXt(BaseModule):
    """ConvNeXt-V2 with optional low-rank adapters, returning one normalised feature map per ``out_indices``.

    Args:
        arch: ``atto`` … ``huge`` (or ``convnextv2_<arch>``).
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32); stages after the
            last one are not built.
        drop_path_rate: stochastic depth, linearly increasing over all blocks of the full
            network (timm's rule; unchanged when later stages are not built).
        adapter: an :class:`~liera_vision.core.AdapterConfig` as a dict (e.g.
            ``dict(method='liera', rank=16)``); ``None`` trains the whole backbone.
            With adapters only the adapter parameters, ``adapter['modules_to_save']`` and the
            output norms are trainable.
        frozen_stages: stages ``0 .. frozen_stages-1`` (their downsample layer and blocks,
            adapters included) are frozen and kept in eval mode; ``0`` or ``-1`` freezes nothing.
        init_cfg: ``None`` (timm's random init) or ``dict(type='Pretrained', checkpoint=PATH_OR_URL,
            prefix='')`` with an official ConvNeXt-V2, FCMAE or timm checkpoint, or a detector
            checkpoint of this backbone (``prefix='backbone'``); see :meth:`load_pretrained`.

    Raises:
        ValueError: naming the argument, for any invalid one.
    """

    def __init__(self, arch: str = "atto", out_indices=(0, 1, 2, 3), drop_path_rate: float = 0.0,
                 adapter: dict | AdapterConfig | None = None, frozen_stages: int = 0,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=_check_init_cfg(init_cfg))
        self.arch = arch_name(arch)
        dims = ARCHS[self.arch][1]
        self.out_indices = _check_out_indices(out_indices)
        self.num_stages = self.out_indices[-1] + 1
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f"LieRAConvNeXt: frozen_stages must be an integer in [-1, 4], got {frozen_stages!r}")
        self.frozen_stages = max(frozen_stages, 0)
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"LieRAConvNeXt: drop_path_rate must be in [0, 1), got {drop_path_rate!r}")

        trunk = _Trunk(create_convnextv2(self.arch, num_classes=0, drop_path_rate=float(drop_path_rate)),
                       self.num_stages)
        self.downsample_layers, self.stages = trunk.downsample_layers, trunk.stages

        report = None
        if adapter is not None:
            try:
                config = AdapterConfig.from_dict(dict(adapter) if not isinstance(adapter, AdapterConfig)
                                                 else adapter.to_dict())
            except (TypeError, ValueError) as err:
                raise ValueError(f"LieRAConvNeXt: invalid adapter config {adapter!r}: {err}") from err
            with warnings.catch_warnings():
                if self.init_cfg is not None:  # these weights are replaced by init_weights: judge those instead
                    warnings.filterwarnings("ignore", category=ZeroWeightWarning)
                _, report = apply_adapters(self, config)
        # created after apply_adapters (which freezes everything it does not adapt): the output
        # norms are new layers, absent from any pretrained checkpoint, so they always train
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))
        self._freeze_stages()
        self._log_parameters(report)

    # --- forward / train ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> LieRAConvNeXt:
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        for i in range(min(self.frozen_stages, self.num_stages)):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for p in module.parameters():
                    p.requires_grad_(False)

    def _log_parameters(self, report) -> None:
        count = count_parameters(self)
        config = get_adapter_config(self)
        how = f"{config.describe()}, {len(report.layers)} layers adapted" if report else "full fine-tuning"
        print_log(f"LieRAConvNeXt-{self.arch} ({how}; stages built {self.num_stages}, "
                  f"frozen_stages={self.frozen_stages}): trainable backbone parameters {count.trainable:,} / "
                  f"{count.total:,} ({100 * count.fraction:.2f}%)", logger="current")

    # --- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint into the backbone, in place (see :meth:`load_pretrained`)."""
        if self.init_cfg is None or self._is_init:
            self._is_init = True
            return
        result = self.load_pretrained(self.init_cfg["checkpoint"], prefix=self.init_cfg.get("prefix", ""))
        print_log(f"LieRAConvNeXt-{self.arch}: {result}", logger="current")
        self._is_init = True

    def load_pretrained(self, checkpoint, prefix: str = "") -> BackboneLoad:
        """Copy a checkpoint's backbone tensors into this backbone's parameters (in place: mmengine
        builds the optimizer before it initialises weights).

        ``checkpoint``: a local path or an http(s) URL (cached under ``$TORCH_HOME/hub/checkpoints``)
        holding an official ConvNeXt-V2, FCMAE or timm checkpoint, or a detector checkpoint of
        ``LieRAConvNeXt`` (``{'meta', 'state_dict'}``, selected with ``prefix='backbone'`` or
        ``'backbone.'``; mmengine's own allow-listed reader, so training checkpoints read too).

        Every tensor of the built backbone comes from the file, except the adapters' own tensors
        when the file has none (then they start at the identity, re-initialised from the loaded
        weights) and the output norms of an official / FCMAE / timm file (new layers). A detector
        checkpoint's adapter tensors load when they fit this backbone's adapter exactly.
        Dropped on purpose (listed once in the returned report): stages this backbone does not
        build, output norms it does not return, the classifier / final norm, FCMAE pre-training
        tensors. A file tensor that has no place here, or output norms a detector checkpoint lacks,
        are warned about (:class:`~liera_vision.errors.CheckpointWarning`).

        Raises ``ValueError`` naming the file and keys (nothing is changed then) for: a backbone
        tensor the file lacks, a shape that differs (wrong arch), adapter tensors that do not fit
        this backbone's adapter config or that this backbone (``adapter=None``) cannot hold;
        ``FileNotFoundError`` for a missing file.
        """
        path = resolve_checkpoint(checkpoint)
        source = str(path)
        state = select_prefix(_read_checkpoint(path), prefix, source)
        load = BackboneLoad(source=source, format="LieRAConvNeXt")
        if not any(PLUGIN_KEY.match(k) or ".base_layer." in k for k in state):
            plain = create_convnextv2(self.arch, num_classes=0)
            report = load_checkpoint(plain, state, source=source)
            load.format, load.conversion = report.format, str(report)
            state = _Trunk(plain, 4).state_dict()  # stem.* and stages.* under this backbone's names
            unused = sorted(k for k in report.loaded if not k.startswith(("stem.", "stages.")))
            if unused:
                load.dropped["not part of a detection backbone"] = unused
        self._copy_backbone_state(state, load)
        return load

    def _copy_backbone_state(self, state: dict[str, torch.Tensor], load: BackboneLoad) -> None:
        """Check everything first, then copy: on any error the backbone is unchanged."""
        layers = adapter_layers(self)
        own = self.state_dict(keep_vars=True)
        own_base, own_adapter = _split_adapted(own, layers)
        file_layers = sorted({k.split(".base_layer.")[0] for k in state if ".base_layer." in k})
        file_base, file_adapter = ({name: state[key] for name, key in part.items()}
                                   for part in _split_adapted(state, file_layers))

        def reason(key: str) -> str | None:
            match = STAGE_KEY.match(key)
            if match and int(match.group(2)) >= self.num_stages:
                return f"stage not built: out_indices={self.out_indices}"
            norm = re.match(r"norm(\d)\.", key)
            if norm and int(norm.group(1)) not in self.out_indices:
                return f"output norm not returned: out_indices={self.out_indices}"
            return None

        for key in sorted([*file_base, *file_adapter]):
            why = reason(key)
            if why:
                load.dropped.setdefault(why, []).append(key)
                file_base.pop(key, None)
                file_adapter.pop(key, None)
        missing = [k for k in own_base if k not in file_base]
        load.fresh = [k for k in missing if re.match(r"norm\d\.", k)]
        missing = [k for k in missing if k not in load.fresh]
        if missing:
            raise ValueError(f"{load.source}: backbone tensors missing from the checkpoint: {_listing(missing)} "
                             f"(wrong arch or a truncated file?)")
        load.unexpected = sorted(k for k in file_base if k not in own_base)
        for key, target in own_base.items():
            if key in file_base and file_base[key].shape != own[target].shape:
                raise ValueError(f"{load.source}: '{key}' has shape {tuple(file_base[key].shape)} in the checkpoint "
                                 f"but {tuple(own[target].shape)} in LieRAConvNeXt-{self.arch} (wrong arch?)")
        config = get_adapter_config(self)
        if file_adapter and config is None:
            raise ValueError(f"{load.source}: the checkpoint carries adapter tensors ({len(file_adapter)}, e.g. "
                             f"'{next(iter(file_adapter))}') but this LieRAConvNeXt has adapter=None; fold them into "
                             "the weights first (tools/merge_backbone.py) or configure the adapter they were "
                             "trained with")
        if file_adapter:  # transactional: restored on any mismatch; base weights untouched so far
            self._load_adapter_tensors(file_adapter, layers, load.source)
            load.loaded += sorted(own_adapter)
        with torch.no_grad():
            for key, target in own_base.items():
                if key in file_base:
                    own[target].copy_(file_base[key])
                    load.loaded.append(target)
        if layers:
            load.adapters = "loaded" if file_adapter else "initialised"
            if file_adapter:
                warn_zero_weights(layers, config)  # (reset_adapters judges them otherwise)
            else:  # identity again from the loaded W: PiSSA / DoRA, weight-derived (auto) scales, zero weights
                reset_adapters(self)
        if load.fresh and load.format == "LieRAConvNeXt":
            warnings.warn(f"{load.source}: the detector checkpoint has no {_listing(load.fresh)}; those output "
                          "norms start from their default init", CheckpointWarning, stacklevel=3)
        if load.unexpected:
            warnings.warn(f"{load.source}: {len(load.unexpected)} checkpoint tensors have no place in "
                          f"LieRAConvNeXt-{self.arch} and were not loaded: {_listing(load.unexpected)}",
                          CheckpointWarning, stacklevel=3)

    def _load_adapter_tensors(self, found: dict[str, torch.Tensor], layers: dict, source: str) -> None:
        """Load a detector checkpoint's adapter tensors (today's or 0.1.0 names) into the adapter layers.

        Each layer loads its share strictly (its own base tensors passed back unchanged), so a rank,
        method or target set that differs is named; ``ValueError`` leaves every adapter as it was.
        """
        by_layer: dict[str, dict[str, torch.Tensor]] = {}
        orphans = []
        for key, tensor in found.items():
            owner = next((name for name in layers if key.startswith(name + ".")), None)
            if owner is None:
                orphans.append(key)
            else:
                by_layer.setdefault(owner, {})[key[len(owner) + 1:]] = tensor
        problems = [f"adapter tensors for layers this backbone does not adapt: {_listing(orphans, 3)}"] * bool(orphans)
        bare = [name for name in layers if name not in by_layer]
        if bare:
            problems.append(f"no adapter tensors in the file for {len(bare)} adapted layers, e.g. {_listing(bare, 3)}")
        tensors = [t for layer in layers.values() for name in layer.settings
                   for t in layer.adapter_tensors(name).values()]
        config = get_adapter_config(self)
        with model_transaction(self, overwrite=tensors):
            for name, part in by_layer.items():
                layer = layers[name]
                scales = {a: float(layer.lora_scaling[a]) for a in layer.settings}
                base = {f"base_layer.{k}": v for k, v in layer.base_layer.state_dict().items()}
                try:
                    layer.load_state_dict({**base, **part}, strict=True)
                except RuntimeError as err:
                    problems.append(f"layer '{name}': {_load_error(err)}")
                    continue
                for adapter, before in scales.items():  # a numeric alpha is part of the config; "auto" is derived
                    after = float(layer.lora_scaling[adapter])
                    if not isinstance(layer.settings[adapter].alpha, str) and abs(after - before) > 1e-6 * abs(before):
                        problems.append(f"layer '{name}': alpha / rank is {after:g} in the file, {before:g} here")
            if problems:
                more = f"; … ({len(problems)} layers)" if len(problems) > 3 else ""
                raise ValueError(f"{source}: the checkpoint's adapter tensors do not fit this backbone's adapter "
                                 f"({config.describe()}): {'; '.join(problems[:3])}{more}. Use the adapter config the "
                                 "checkpoint was trained with, or fold its adapters into the weights first "
                                 "(tools/merge_backbone.py)")


def _read_checkpoint(path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch file through mmengine's allow-listed weights-only reader (training checkpoints too)."""
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    return unwrap_state_dict(load_local_checkpoint(str(path), map_location="cpu"), str(path))


def _load_error(err: RuntimeError) -> str:
    """torch's ``load_state_dict`` error in one short line: missing / unexpected keys, shapes as tuples."""
    text = " ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
    text = re.sub(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                  r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)\.?",
                  r"\1 (\2) in the file, (\3) here;", text)
    return text.rstrip(" ;.")


def _split_adapted(keys, layers) -> tuple[dict[str, str], dict[str, str]]:
    """(base name -> key, adapter key -> key): under an adapted layer ``L``, ``L.base_layer.weight``
    has the base name ``L.weight``; every other tensor of ``L`` is the adapter's own."""
    base, adapter = {}, {}
    for key in keys:
        layer = next((name for name in layers if key.startswith(name + ".")), None)
        if layer is None:
            base[key] = key
        elif key.startswith(layer + ".base_layer."):
            base[layer + "." + key[len(layer) + len(".base_layer."):]] = key
        else:
            adapter[key] = key
    return base, adapter


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
