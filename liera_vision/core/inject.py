"""Target matching, ``apply_adapters``, merge / unmerge / merge_and_unload."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

from torch import nn

from .config import AdapterConfig
from .layers import AdapterLayer

CONFIG_ATTR = "_liera_adapter_config"
ADAPTABLE = (nn.Conv2d, nn.Linear)


def name_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` fully matches ``name`` or one of its dotted suffixes."""
    parts = name.split(".")
    return any(re.fullmatch(pattern, ".".join(parts[i:])) for i in range(len(parts)))


def _preset_matches(preset: str, module: nn.Module) -> bool:
    if not isinstance(module, ADAPTABLE):
        return False
    spatial = isinstance(module, nn.Conv2d) and math.prod(module.kernel_size) > 1
    return {"spatial": spatial, "pointwise": not spatial, "all": True}[preset]


def get_adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config ``apply_adapters`` used on ``model`` (``None`` for a plain model)."""
    return getattr(model, CONFIG_ATTR, None)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _saved_module_names(model: nn.Module, patterns: list[str]) -> list[str]:
    names = []
    for pattern in patterns:
        hits = [n for n, _ in model.named_modules() if n and name_matches(pattern, n)]
        if not hits:
            raise ValueError(f"modules_to_save pattern {pattern!r} matches no module of {type(model).__name__}")
        names += [h for h in hits if h not in names]
    # keep only outermost modules ("head" covers "head.fc")
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]


def select_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names of the modules ``config`` adapts; ``ValueError`` when the selection is invalid."""
    saved = _saved_module_names(model, config.modules_to_save)
    adapted = adapter_layers(model)
    targets = []
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in saved):
            continue
        if any(name_matches(p, name) for p in config.exclude):
            continue
        if isinstance(config.targets, str):
            hit = _preset_matches(config.targets, module)
        else:
            hit = any(name_matches(p, name) for p in config.targets)
        if not hit:
            continue
        owner = next((a for a in adapted if name == a or name.startswith(a + ".")), None)
        if owner is not None:
            raise ValueError(f"layer '{owner}' is already adapted; applying adapters twice to one layer is not "
                             "supported (merge_and_unload the model first)")
        if not isinstance(module, ADAPTABLE):
            raise ValueError(f"layer '{name}' matched targets={config.targets!r} but is a {type(module).__name__}; "
                             "adapters wrap nn.Conv2d and nn.Linear only (narrow the regex or use exclude)")
        targets.append(name)
    if not targets:
        sample = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)][:6]
        raise ValueError(f"targets={config.targets!r} (exclude={config.exclude!r}) matched no nn.Conv2d / nn.Linear "
                         f"in {type(model).__name__}; its adaptable layers are named like {sample}")
    return targets


@dataclass
class AdaptedLayer:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    adapter_params: int
    zero_fraction: float


@dataclass
class AdaptationReport:
    """What ``apply_adapters`` did. ``str(report)`` is a table."""

    config: AdapterConfig
    layers: list[AdaptedLayer] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    mean_abs_weight: float = 0.0  # over every adapted weight entry; a Lie step scales with it

    @property
    def suggested_lie_scaling(self) -> float:
        """α/r ≈ 1 / mean|W|: where the transfer study (docs/benchmarks.md) found Lie updates work best."""
        return 1.0 / self.mean_abs_weight if self.mean_abs_weight else float("nan")

    @property
    def adapter_params(self) -> int:
        return sum(layer.adapter_params for layer in self.layers)

    def __str__(self) -> str:
        rows = [f"{'layer':<40} {'type':<20} {'weight':<20} {'adapter params':>14}"]
        for layer in self.layers:
            rows.append(f"{layer.name:<40} {layer.kind:<20} {str(layer.weight_shape):<20} {layer.adapter_params:>14,}")
        rows.append(f"{self.config.describe()}: {len(self.layers)} layers adapted, "
                    f"{self.adapter_params:,} adapter params; modules_to_save={self.modules_to_save}; "
                    f"trainable {self.trainable:,} / {self.total:,} ({100 * self.trainable / max(self.total, 1):.2f}%)")
        if self.config.method == "liera":
            rows.append(f"mean |W| of the adapted weights {self.mean_abs_weight:.4g}: a Lie update moves W by W ⊙ ΔW, "
                        f"so its steps scale with |W|; alpha / rank ≈ 1 / mean|W| = {self.suggested_lie_scaling:.3g} "
                        f"worked best in docs/benchmarks.md (this config: {self.config.scaling:g})")
        return "\n".join(rows)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "Linear"
    k = "x".join(map(str, module.kernel_size))
    groups = "" if module.groups == 1 else (" dw" if module.groups == module.in_channels else f" g{module.groups}")
    return f"Conv2d {k}/s{module.stride[0]}{groups}"


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_adapters(model: nn.Module, config: AdapterConfig | dict) -> tuple[nn.Module, AdaptationReport]:
    """Wrap the targeted layers of ``model`` in place and freeze everything else.

    Parameters stay trainable for the adapters and ``config.modules_to_save``. Returns the
    model and an :class:`AdaptationReport`.
    """
    config = AdapterConfig.from_dict(config) if isinstance(config, dict) else config
    if get_adapter_config(model) is not None:
        first = next(iter(adapter_layers(model)), "?")
        raise ValueError(f"{type(model).__name__} already carries adapters (e.g. layer '{first}'); applying adapters "
                         "twice is not supported (merge_and_unload the model first)")
    targets = select_targets(model, config)
    saved = _saved_module_names(model, config.modules_to_save)
    report = AdaptationReport(config=config, modules_to_save=saved)
    wrapped = {}
    for name in targets:
        base = model.get_submodule(name)
        wrapped[name] = AdapterLayer(base, config, name)  # validates rank before anything changes
    abs_sum = sum(float(layer.base_layer.weight.detach().abs().sum()) for layer in wrapped.values())
    report.mean_abs_weight = abs_sum / sum(layer.base_layer.weight.numel() for layer in wrapped.values())
    zeros = warn_zero_weights(wrapped, config)
    for name, layer in wrapped.items():
        base = layer.base_layer
        _set_submodule(model, name, layer)
        n_params = sum(p.numel() for p in layer.parameters(recurse=False))
        report.layers.append(AdaptedLayer(name, _kind(base), tuple(base.weight.shape), n_params,
                                          zeros[name] / base.weight.numel()))

    for p in model.parameters():
        p.requires_grad_(False)
    for layer in wrapped.values():
        for p in layer.parameters(recurse=False):
            p.requires_grad_(True)
    for name in saved:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    report.total = sum(p.numel() for p in model.parameters())
    report.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, report


def warn_zero_weights(layers: dict[str, AdapterLayer], config: AdapterConfig, stacklevel: int = 2) -> dict[str, int]:
    """Count the exactly-zero base weight entries per layer; warn (once, naming each layer) when a Lie
    update cannot move them. Call it again after loading new base weights into adapted layers."""
    zeros = {name: int((layer.base_layer.weight == 0).sum()) for name, layer in layers.items()}
    notes = [f"layer '{name}': {z:,} of {layers[name].base_layer.weight.numel():,} "
             f"({z / layers[name].base_layer.weight.numel():.4%})" for name, z in zeros.items() if z]
    if notes and config.method == "liera" and not config.zero_weight_fallback:
        warnings.warn("weight entries that are exactly zero cannot move under a Lie (multiplicative) update: "
                      f"{'; '.join(notes)}. Set zero_weight_fallback=True to train them additively.",
                      stacklevel=stacklevel + 1)
    return zeros


def _require_adapters(model: nn.Module) -> dict[str, AdapterLayer]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no adapter layers; call apply_adapters first")
    return layers


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (reversible with :func:`unmerge_adapters`)."""
    for layer in _require_adapters(model).values():
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Restore the base weights exactly (from the cache kept by ``merge``)."""
    for layer in _require_adapters(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Return ``model`` with plain ``nn.Conv2d`` / ``nn.Linear`` layers carrying the merged weights.

    Its ``state_dict`` loads strictly into the unadapted architecture.
    """
    for name, layer in _require_adapters(model).items():
        _set_submodule(model, name, layer.unload(merge=True))
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def unload_adapters(model: nn.Module) -> nn.Module:
    """Drop the adapters and give back the original base layers (no merge)."""
    for name, layer in _require_adapters(model).items():
        _set_submodule(model, name, layer.unload(merge=False))
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model
