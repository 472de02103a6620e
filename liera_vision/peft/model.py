"""``LieRAModel``: the PEFT tuner that wraps target layers in :class:`~liera_vision.peft.layer.LieRALayer`.

PEFT's :class:`BaseTuner` walks the model and calls :meth:`LieRAModel._create_and_replace` once per
matched module; that builds core's layer. Three things need the whole model and therefore happen in
:meth:`LieRAModel.inject_adapter`, around PEFT's walk (the route both ``get_peft_model`` and
``add_adapter`` / ``load_adapter`` take):

* a core target preset (``target_modules=None`` / ``"spatial"`` / ``"pointwise"`` / ``"all"``) is
  resolved to the explicit list of layer names, with the layers an adapter could not handle correctly
  (weight_norm, tied weights …) left out and reported in a :class:`~liera_vision.errors.LieraWarning`;
* the weight-derived scale (``alpha="auto"`` …, ``alpha / r = 1 / mean|W|``) is resolved over *all*
  layers of the adapter once they exist and written into each layer's ``lora_scaling`` buffer, which
  PEFT saves (``adapter_model.safetensors``) and restores;
* the injection is a transaction (core's :func:`~liera_vision.core.model_transaction`): if anything
  fails the model is left exactly as it was.
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from ..core import AdapterLayer, bases, model_transaction, warn_zero_weights
from ..core.delta import INITS
from ..core.inject import pattern_value
from ..core.io import check_adapter_tensors
from ..core.scale import ScaleInput, resolve_scalings
from ..errors import LieraWarning
from .config import LieRAConfig, exact_pattern
from .layer import LieRALayer


class AdapterConfigs(dict):
    """``LieRAModel.peft_config``: a dict of adapter name → config whose membership test refuses several names at once
    with LieRA's explanation. ``PeftModel.set_adapter(["a", "b"])`` asks ``["a", "b"] in peft_config`` before our
    tuner runs; a plain dict answers with ``TypeError: unhashable type: 'list'``."""

    def __contains__(self, key: object) -> bool:
        if isinstance(key, (list, tuple, set)):
            raise ValueError(f"LieRA adapters are named one at a time, got {list(key)!r}: exactly one adapter is "
                             "active at a time (set_adapter takes one name; Lie updates compose multiplicatively, so "
                             "several active adapters would not be their sum); merge several one after the other "
                             "with merge_adapter(adapter_names=[...])")
        return super().__contains__(key)


class LieRAModel(BaseTuner):
    """PEFT tuner for :class:`~liera_vision.peft.LieRAConfig` (built by :func:`peft.get_peft_model`)."""

    prefix: str = "lora_"  # core's tensor names: lora_A, lora_B, lora_magnitude, lora_*_start, lora_scaling
    tuner_layer_cls = LieRALayer
    target_module_mapping: dict = {}  # no per-architecture defaults: target_modules=None means the "spatial" preset

    def _prepare_adapter_config(self, peft_config: LieRAConfig, model_config: dict) -> LieRAConfig:
        return peft_config  # presets are resolved in inject_adapter, where the model is at hand

    def _pre_injection_hook(self, model: nn.Module, config: LieRAConfig, adapter_name: str) -> None:
        # runs in BaseTuner.__init__ after peft_config is set and before it is shared with the model / PeftModel
        if type(self.peft_config) is dict:
            self.peft_config = AdapterConfigs(self.peft_config)
        super()._pre_injection_hook(model, config, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: LieRAConfig, adapter_name: str,
                                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PEFT's remapping, after core's check of the tensors (finite, positive ``lora_scaling``): called by
        ``set_peft_model_state_dict`` for every load, before anything is copied into the model.

        Raises:
            ValueError: naming the adapter and the tensor at fault.
        """
        check_adapter_tensors(state_dict, f"LieRA adapter {adapter_name!r} being loaded")
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        """Not supported: PEFT's weighted combination sums the factors of additive updates; LieRA's Lie updates
        compose multiplicatively (``W ⊙ exp(ΔW)``) and carry per-layer scales, so a weighted sum of their factors
        is not a meaningful adapter.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("add_weighted_adapter is not supported for LieRA adapters: PEFT's weighted "
                                  "combination sums factors of additive (LoRA) updates, while LieRA updates compose "
                                  "multiplicatively; merge adapters one after the other instead "
                                  "(merge_adapter(adapter_names=[...]))")

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        config = self.peft_config[adapter_name]
        if not isinstance(config, LieRAConfig):
            raise ValueError(f"LieRAModel takes LieRAConfig, got {type(config).__name__} for adapter {adapter_name!r}")
        original_targets = config.target_modules
        try:
            with model_transaction(model):
                if state_dict is None and config.target_preset is not None:
                    config.target_modules = exact_pattern(self._preset_targets(model, config))
                self._graph = (bases.parameter_owners(model), bases.module_paths(model))
                try:
                    super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                           low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
                finally:
                    self._graph = None
                self._resolve_scales(model, adapter_name, config)
        except BaseException:
            config.target_modules = original_targets
            raise

    @staticmethod
    def _preset_targets(model: nn.Module, config: LieRAConfig) -> list[str]:
        """The layers core's preset selects, outside adapter layers and PEFT's wrappers; warns about layers it
        leaves out because an adapter could not handle them correctly (core's rule, ``bases.cannot_adapt``)."""
        preset = {"spatial": bases.is_spatial, "pointwise": lambda m: not bases.is_spatial(m),
                  "all": lambda m: True}[config.target_preset]
        wrappers = [n for n, m in model.named_modules() if isinstance(m, (AdapterLayer, AuxiliaryTrainingWrapper))]
        owners, paths = bases.parameter_owners(model), bases.module_paths(model)
        names, skipped = [], []
        for name, module in model.named_modules():
            if not name or any(name.startswith(w + ".") for w in wrappers):
                continue
            base = module.base_layer if isinstance(module, AdapterLayer) else module
            if bases.base_kind(base) is None or not preset(base):
                continue
            reason = bases.cannot_adapt(base, owners, paths[id(module)])
            if reason:
                skipped.append(f"'{name}': {reason}")
            else:
                names.append(name)
        if skipped:
            warnings.warn(f"LieRA target preset {config.target_preset!r} leaves out {len(skipped)} layer(s) an adapter "
                          f"could not handle correctly: {'; '.join(skipped)}", LieraWarning, stacklevel=4)
        if not names:
            raise ValueError(f"target_modules={config.target_modules!r} (LieRA preset {config.target_preset!r}) "
                             f"matches no adaptable layer of {type(model).__name__}; give target_modules explicitly "
                             "(layer names, or a regex)")
        return names

    def _create_and_replace(self, peft_config: LieRAConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, *, parameter_name: str | None = None) -> None:
        if parameter_name is not None:
            raise ValueError("LieRA adapts modules (target_modules), not bare parameters (target_parameters)")
        config = peft_config.to_adapter_config()
        rank = pattern_value(config.rank_pattern, current_key) or config.rank
        alpha = pattern_value(config.alpha_pattern, current_key) or config.alpha
        # a weight-derived scale needs every layer of the adapter: a placeholder now, resolved in _resolve_scales
        scaling = 1.0 if isinstance(alpha, str) else float(alpha) / rank
        if isinstance(target, LieRALayer):
            target.add_adapter(adapter_name, config, rank=rank, alpha=alpha, scaling=scaling)
            return
        if isinstance(target, BaseTunerLayer):
            raise ValueError(f"layer '{current_key}' already carries a {type(target).__name__} adapter of another PEFT "
                             "method; LieRA adapters cannot wrap it (exclude it with exclude_modules)")
        owners, paths = self._graph
        if bases.base_kind(target) is None:
            raise ValueError(f"layer '{current_key}' matched target_modules={peft_config.target_modules!r} but is a "
                             f"{type(target).__name__}; LieRA adapts {bases.SUPPORTED} only (narrow target_modules or "
                             "use exclude_modules)")
        where = paths.get(id(target), [current_key])
        reason = bases.cannot_adapt(target, owners, where)
        if reason:
            raise ValueError(f"layer '{current_key}' cannot be adapted: {reason}; exclude it (exclude_modules)")
        layer = LieRALayer(target, config, current_key, adapter_name, rank=rank, alpha=alpha, scaling=scaling)
        for path in where:  # a module reachable under several names is wrapped once and installed everywhere
            parent_name, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent_name) if parent_name else self.model, child, layer)

    def _resolve_scales(self, model: nn.Module, adapter_name: str, config: LieRAConfig) -> None:
        """Weight-derived scales over all layers of ``adapter_name``; then judge exactly-zero weights."""
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LieRALayer) and adapter_name in m.settings}
        if any(isinstance(layer.settings[adapter_name].alpha, str) for layer in layers.values()):
            scalings = resolve_scalings({
                name: ScaleInput(bases.to_canonical(layer.kind, layer.base_layer.weight.detach()),
                                 bases.label(layer.base_layer), layer.settings[adapter_name].alpha,
                                 layer.settings[adapter_name].rank)
                for name, layer in layers.items()})
            for name, layer in layers.items():
                if INITS[layer.settings[adapter_name].config.init].relative:  # PiSSA's start depends on the scale
                    layer.reset_adapter(adapter_name, scalings[name])
                else:
                    layer.lora_scaling[adapter_name].fill_(scalings[name])
        warn_zero_weights(layers, config.to_adapter_config(), stacklevel=5)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # PEFT 0.21 copies `child.weight` onto a module it unwraps from modules_to_save; a container module such
        # as timm's classifier head (NormMlpClassifierHead) has no weight, so merge_and_unload / unload would fail
        # with AttributeError. The unwrapped module already holds its own tensors: install it as it is.
        if isinstance(child, AuxiliaryTrainingWrapper) and not hasattr(new_module, "weight"):
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name``; if it was active, the first remaining adapter (sorted, as PEFT picks it) is."""
        was_active = adapter_name in self.active_adapters
        super().delete_adapter(adapter_name)
        if was_active and self.peft_config:
            self.set_adapter(sorted(self.peft_config)[0])
