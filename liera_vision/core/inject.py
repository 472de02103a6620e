"""Target selection, ``apply_adapters``, named adapters on a model, merge / unmerge / merge_and_unload.

Every operation that changes a model is a transaction: on any error the model is left exactly as
it was (modules, parameters, buffers, ``requires_grad``, training flags, adapter state).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LieraWarning, ZeroWeightWarning
from . import bases
from .config import AdapterConfig
from .delta import factor_shape
from .layers import AdapterLayer
from .scale import ScaleInput, resolve_scalings

CONFIG_ATTR = "_liera_adapter_configs"  # adapter name -> AdapterConfig, on the adapted model


# --- matching -------------------------------------------------------------------------------------
def name_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` fully matches ``name`` or one of its dotted suffixes (PEFT's rule)."""
    parts = name.split(".")
    return any(re.fullmatch(pattern, ".".join(parts[i:])) for i in range(len(parts)))


def pattern_value(patterns: dict, name: str):
    r"""The value of the first key of ``patterns`` (insertion order) that matches ``name``, else ``None``.

    PEFT's ``rank_pattern`` / ``alpha_pattern`` rule, verbatim (``peft.utils.other.get_pattern_key``):
    ``re.match(rf"(.*\.)?({key})$", name)``, so a key matches the name or a dotted suffix of it, and an
    anchored key (``^fc``) only the whole name."""
    return next((value for key, value in patterns.items() if re.match(rf"(.*\.)?({key})$", name)), None)


def _preset_matches(preset: str, module: nn.Module) -> bool:
    if bases.base_kind(module) is None:
        return False
    spatial = bases.is_spatial(module)
    return {"spatial": spatial, "pointwise": not spatial, "all": True}[preset]


# --- the adapters of a model ----------------------------------------------------------------------
def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Name → adapter layer (a layer reachable under several names is listed once, by its first name)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _carriers(model: nn.Module) -> list[nn.Module]:
    """The modules that ``apply_adapters`` was called on: ``model`` or modules inside it (a detector's backbone)."""
    return [m for m in model.modules() if CONFIG_ATTR in vars(m)]


def adapter_configs(model: nn.Module) -> dict[str, AdapterConfig]:
    """Adapter name → the config it was applied with (empty for a plain model); also when the adapted module
    sits inside ``model`` (a detector holding an adapted backbone, a wrapper)."""
    return {name: config for m in _carriers(model) for name, config in getattr(m, CONFIG_ATTR).items()}


def _forget(model: nn.Module, adapter_names=None) -> None:
    """Drop the configs of ``adapter_names`` (default: all) from every carrier in ``model``."""
    for m in _carriers(model):
        kept = {n: c for n, c in getattr(m, CONFIG_ATTR).items()
                if adapter_names is not None and n not in adapter_names}
        if kept:
            setattr(m, CONFIG_ATTR, kept)
        else:
            delattr(m, CONFIG_ATTR)


def active_adapter(model: nn.Module) -> str | None:
    """The name of the model's active adapter (``None`` for a plain model)."""
    return next((layer.active_adapter for layer in adapter_layers(model).values()
                 if layer.active_adapter in layer.settings), None)


def get_adapter_config(model: nn.Module, adapter_name: str | None = None) -> AdapterConfig | None:
    """The config of ``adapter_name`` (default: the active adapter); ``None`` for a plain model.

    This is the one place an adapted model keeps its configuration.
    """
    configs = adapter_configs(model)
    if adapter_name is None:
        adapter_name = active_adapter(model) or next(iter(configs), None)
    return configs.get(adapter_name)


def _saved_module_names(model: nn.Module, patterns: list[str]) -> list[str]:
    names = []
    for pattern in patterns:
        hits = [n for n, _ in model.named_modules() if n and name_matches(pattern, n)]
        if not hits:
            raise ValueError(f"modules_to_save pattern {pattern!r} matches no module of {type(model).__name__}")
        names += [h for h in hits if h not in names]
    # keep only outermost modules ("head" covers "head.fc")
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass
class Selection:
    targets: list[str]
    skipped: list[tuple[str, str]]  # (name, why an adapter there could not be correct)


def find_targets(model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> Selection:
    """The layers ``config`` adapts (``targets``) and those a preset passes over because an adapter could not
    be correct there (``skipped``, with the reason); ``ValueError`` when the selection is invalid."""
    saved = _saved_module_names(model, config.modules_to_save)
    # trained whole by another adapter, or PEFT's: an adapter there would be saved, merged and unloaded twice
    taken = {}
    for other, other_config in adapter_configs(model).items():
        if other != adapter_name:
            for pattern in other_config.modules_to_save:
                taken |= {n: f"adapter {other!r} trains '{n}' whole (modules_to_save)"
                          for n, _ in model.named_modules() if n and name_matches(pattern, n)}
    taken |= {n: f"it belongs to Hugging Face PEFT's {type(m).__name__} '{n}' (adapt the model before "
                 "get_peft_model, or through liera_vision.peft)"
              for n, m in model.named_modules() if n and _peft_owned(m)}
    owners = bases.parameter_owners(model)
    paths = bases.module_paths(model)
    explicit = not isinstance(config.targets, str)
    wrappers = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    adapted = [n for n in saved if any(_under(w, [n]) or _under(n, [w]) for w in wrappers)]
    if adapted:
        raise ValueError(f"modules_to_save {adapted} hold (or are) layers another adapter wraps; train them through "
                         "that adapter, or merge_and_unload first")
    selection = Selection([], [])
    for name, module in model.named_modules():
        if not name or _under(name, saved) or any(name.startswith(w + ".") for w in wrappers):
            continue
        if any(name_matches(p, path) for p in config.exclude for path in paths[id(module)]):
            continue
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        hit = any(name_matches(p, name) for p in config.targets) if explicit else _preset_matches(config.targets, base)
        if not hit:
            continue
        if bases.base_kind(base) is None:
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            raise ValueError(f"layer '{name}' matched targets={config.targets!r} but is a {kind}; "
                             f"adapters wrap {bases.SUPPORTED} only (narrow the regex or use exclude)")
        if isinstance(module, AdapterLayer) and adapter_name in module.settings:
            raise ValueError(f"layer '{name}' already has an adapter named {adapter_name!r}; give the new adapter "
                             "another adapter_name (or merge_and_unload the model first)")
        owner = next((t for t in taken if _under(name, [t])), None)
        reason = taken[owner] if owner is not None else bases.cannot_adapt(base, owners, paths[id(module)])
        if reason and explicit:
            raise ValueError(f"layer '{name}' cannot be adapted: {reason}; exclude it or narrow targets")
        if reason:
            selection.skipped.append((name, reason))
        else:
            selection.targets.append(name)
    if not selection.targets:
        sample = [n for n, m in model.named_modules() if bases.base_kind(m) is not None][:6]
        skipped = f"; skipped: {selection.skipped}" if selection.skipped else ""
        raise ValueError(f"targets={config.targets!r} (exclude={config.exclude!r}) matched no adaptable layer in "
                         f"{type(model).__name__}; its adaptable layers are named like {sample}{skipped}")
    return selection


def select_targets(model: nn.Module, config: AdapterConfig, adapter_name: str = "default") -> list[str]:
    """Names of the modules ``config`` adapts; ``ValueError`` when the selection is invalid."""
    return find_targets(model, config, adapter_name).targets


# --- transactions ------------------------------------------------------------------------------------
@contextlib.contextmanager
def model_transaction(model: nn.Module, overwrite: list[torch.Tensor] = ()) -> Iterator[None]:
    """On any exception inside, put ``model`` back exactly as it was (then re-raise).

    Restores every module's children, parameters, buffers, training flag and ``requires_grad``,
    the adapter layers' state and the model's adapter configs; ``overwrite`` lists tensors whose
    values the block may change (they are copied back).
    """
    modules = list(model.modules())
    structure = [(m, dict(m._modules), dict(m._parameters), dict(m._buffers), set(m._non_persistent_buffers_set),
                  m.training) for m in modules]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    layers = [(m, copy.copy(m.settings), list(m._active_adapter), list(m.merged_adapters), m._disable_adapters)
              for m in modules if isinstance(m, AdapterLayer)]
    configs = [(m, vars(m).get(CONFIG_ATTR)) for m in modules]
    values = [(t, t.detach().clone()) for t in overwrite]
    try:
        yield
    except BaseException:
        for m, children, params, buffers, non_persistent, training in structure:
            m._modules.clear(), m._modules.update(children)
            m._parameters.clear(), m._parameters.update(params)
            m._buffers.clear(), m._buffers.update(buffers)
            m._non_persistent_buffers_set.clear(), m._non_persistent_buffers_set.update(non_persistent)
            m.training = training
        for p, flag in grads:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, settings, active, merged, disabled in layers:
            m.settings, m._active_adapter, m.merged_adapters, m._disable_adapters = settings, active, merged, disabled
        with torch.no_grad():
            for t, value in values:
                t.copy_(value)
        for m, carried in configs:
            if carried is None:
                vars(m).pop(CONFIG_ATTR, None)
            else:
                setattr(m, CONFIG_ATTR, carried)
        raise


def _install(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --- report ----------------------------------------------------------------------------------------
@dataclass
class AdaptedLayer:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    rank: int
    adapter_params: int
    scaling: float
    zero_fraction: float


@dataclass
class AdaptationReport:
    """What ``apply_adapters`` did. ``str(report)`` is a table; :meth:`summary` one line for logs."""

    config: AdapterConfig
    adapter_name: str = "default"
    layers: list[AdaptedLayer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    mean_abs_weight: float = 0.0  # over every adapted weight entry; a Lie step scales with it

    @property
    def adapter_params(self) -> int:
        return sum(layer.adapter_params for layer in self.layers)

    @property
    def suggested_lie_scaling(self) -> float:
        """``1 / mean|W|``: the alpha / rank that ``alpha="auto"`` uses (docs/benchmarks.md, "LieRA's scale")."""
        return 1.0 / self.mean_abs_weight if self.mean_abs_weight else float("nan")

    def summary(self) -> str:
        """``liera-taylor-r8 (kernel, alpha auto): 16 layers adapted, 94,796 adapter params; trainable … (x%)``."""
        return (f"{self.config.describe()}: {len(self.layers)} layers adapted, {self.adapter_params:,} adapter params; "
                f"modules_to_save={self.modules_to_save}; trainable {self.trainable:,} / {self.total:,} "
                f"({100 * self.trainable / max(self.total, 1):.2f}%)")

    def __str__(self) -> str:
        rows = [f"{'layer':<40} {'type':<20} {'weight':<22} {'rank':>4} {'alpha/rank':>10} {'adapter params':>14}"]
        for layer in self.layers:
            rows.append(f"{layer.name:<40} {layer.kind:<20} {str(layer.weight_shape):<22} {layer.rank:>4} "
                        f"{layer.scaling:>10.4g} {layer.adapter_params:>14,}")
        rows.append(self.summary())
        for name, reason in self.skipped:
            rows.append(f"skipped '{name}': {reason}")
        rows += [f"note: {note}" for note in self.notes]
        if self.config.is_lie:
            how = (f"alpha={self.config.alpha!r}: alpha/rank from 1/mean|W|" if isinstance(self.config.alpha, str)
                   else f"alpha/rank {self.config.scaling:g}; alpha='auto' would give {self.suggested_lie_scaling:.3g}")
            rows.append(f"mean |W| of the adapted weights {self.mean_abs_weight:.4g}: a Lie update moves W by "
                        f"W ⊙ ΔW, so its steps scale with |W| ({how}; docs/benchmarks.md)")
        return "\n".join(rows)


# --- apply -----------------------------------------------------------------------------------------
def numel(p: torch.Tensor) -> int:
    """Entries of ``p``; 0 for a lazy module's uninitialised parameter."""
    return 0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel()


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter):  # lazy: nothing to freeze yet
            p.requires_grad_(False)
    for layer in adapter_layers(model).values():
        for name in layer.active_adapters:
            if name in layer.settings:
                layer._set_trainable(name, True)


def apply_adapters(model: nn.Module, config: AdapterConfig | dict,
                   adapter_name: str = "default") -> tuple[nn.Module, AdaptationReport]:
    """Wrap the targeted layers of ``model`` in place with adapter ``adapter_name``.

    The first adapter of a model becomes active, and everything but its parameters and
    ``config.modules_to_save`` is frozen. A further adapter (another ``adapter_name``) is added
    inactive and frozen: :func:`set_adapter` switches. ``modules_to_save`` modules are shared by the
    adapters of one model. Returns the model and an :class:`AdaptationReport`; presets skip layers
    an adapter could not handle correctly (listed in ``report.skipped``), an explicit regex that
    names one raises.

    Raises:
        ValueError: invalid config or selection (naming the layer or field); the model is unchanged.
    """
    _require_module(model, "apply_adapters")
    config = AdapterConfig.from_dict(config) if isinstance(config, dict) else config
    if not isinstance(config, AdapterConfig):
        raise ValueError(f"apply_adapters expects an AdapterConfig or a dict, got {type(config).__name__}")
    config = copy.deepcopy(config)  # frozen, but its lists are not: the model keeps its own copy
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise ValueError(f"{type(model).__name__} already has an adapter named {adapter_name!r}; applying it twice is "
                         "not supported (use another adapter_name, or merge_and_unload the model first)")
    if torch.is_inference_mode_enabled():
        raise ValueError("apply_adapters was called under torch.inference_mode(): tensors made there can never take "
                         "part in training; apply the adapters outside it")
    merged = [n for n, layer in adapter_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged[:4]} hold merged adapters: a new adapter would start from the merged "
                         "weights; unmerge_adapters(model) first")
    selection = find_targets(model, config, adapter_name)
    saved = _saved_module_names(model, config.modules_to_save)
    paths = bases.module_paths(model)
    specs = {}
    for name in selection.targets:
        module = model.get_submodule(name)
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        rank = pattern_value(config.rank_pattern, name) or config.rank
        alpha = pattern_value(config.alpha_pattern, name) or config.alpha
        weight = bases.to_canonical(bases.base_kind(base), base.weight)
        factor_shape(tuple(weight.shape), bases.groups_of(base), rank, config.factorization, f"layer '{name}'")
        specs[name] = (module, base, rank, alpha, ScaleInput(weight, bases.label(base), alpha, rank))
    scalings = resolve_scalings({name: spec[4] for name, spec in specs.items()})
    report = AdaptationReport(config=config, adapter_name=adapter_name, skipped=selection.skipped,
                              modules_to_save=saved)
    active = active_adapter(model)
    with model_transaction(model):
        for name, (module, base, rank, alpha, _) in specs.items():
            if isinstance(module, AdapterLayer):
                module.add_adapter(adapter_name, config, rank=rank, alpha=alpha, scaling=scalings[name])
                layer = module
            else:
                layer = AdapterLayer(base, config, name, adapter_name, rank=rank, alpha=alpha, scaling=scalings[name])
                if active is not None:  # the model's active adapter stays active (this layer runs its base weight)
                    layer.set_adapter(active)
                for path in paths[id(module)]:  # a module shared under several names is wrapped once, everywhere
                    _install(model, path, layer)
            tensors = layer.adapter_tensors(adapter_name)
            n_params = sum(tensors[attr].numel() for attr in layer.adapter_layer_names if attr in tensors)
            report.layers.append(AdaptedLayer(name, bases.label(base), tuple(base.weight.shape), rank, n_params,
                                              scalings[name], 0.0))
        layers = {name: model.get_submodule(name) for name in specs}
        if not configs:
            _freeze(model)
        for name in saved:
            model.get_submodule(name).requires_grad_(True)
        zeros = warn_zero_weights(layers, config)
        setattr(model, CONFIG_ATTR, {**vars(model).get(CONFIG_ATTR, {}), adapter_name: config})
    abs_sum = sum(float(spec[4].weight.detach().abs().sum(dtype=torch.float64)) for spec in specs.values())
    report.mean_abs_weight = abs_sum / sum(spec[4].weight.numel() for spec in specs.values())
    for row in report.layers:
        row.zero_fraction = zeros[row.name] / specs[row.name][1].weight.numel()
    stats = [n for n, m in model.named_modules() if getattr(m, "track_running_stats", False)
             and not _under(n, saved) and getattr(m, "running_mean", None) is not None]
    if stats:
        report.notes.append(f"{len(stats)} normalisation layers (e.g. '{stats[0]}') keep running statistics that "
                            "training mode updates but adapter files do not store: keep them in eval mode while "
                            "training, or add them to modules_to_save")
    report.total = sum(numel(p) for p in model.parameters())
    report.trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return model, report


def warn_zero_weights(layers: dict[str, AdapterLayer], config: AdapterConfig, stacklevel: int = 2) -> dict[str, int]:
    """Count the exactly-zero base weight entries per layer; warn once (:class:`ZeroWeightWarning`, naming
    each layer) when a Lie update cannot move them."""
    zeros = {name: int((layer.base_layer.weight == 0).sum()) for name, layer in layers.items()}
    notes = [f"layer '{name}': {z:,} of {layers[name].base_layer.weight.numel():,} "
             f"({z / layers[name].base_layer.weight.numel():.4%})" for name, z in zeros.items() if z]
    if notes and config.is_lie and not config.zero_weight_fallback:
        warnings.warn("weight entries that are exactly zero cannot move under a Lie (multiplicative) update: "
                      f"{'; '.join(notes)}. Set zero_weight_fallback=True to train them additively.",
                      ZeroWeightWarning, stacklevel=stacklevel + 1)
    return zeros


def reset_adapters(model: nn.Module, adapter_name: str | None = None) -> dict[str, float]:
    """(Re-)initialise adapters from the model's current base weights; call it after loading new weights.

    PiSSA's factors, DoRA's magnitudes and weight-derived scales (``alpha="auto"`` …) are recomputed,
    every adapter is the identity again, and exactly-zero weights are judged (:class:`ZeroWeightWarning`).
    Returns ``layer name → alpha / rank`` of the reset adapter(s) (the last one for several). One
    transaction: on an error no adapter is changed.
    """
    layers = _require_adapters(model, "reset_adapters")
    configs = adapter_configs(model)
    names = [adapter_name] if adapter_name is not None else list(configs)
    for name in names:
        _require_name(model, name, "reset_adapters")
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged[:4]} hold merged adapters; unmerge_adapters(model) before resetting")
    plans = {}
    with torch.no_grad():
        for name in names:
            own = {n: layer for n, layer in layers.items() if name in layer.settings}
            plans[name] = own, resolve_scalings({
                n: ScaleInput(layer._canonical(layer.base_layer.weight), bases.label(layer.base_layer),
                              layer.settings[name].alpha, layer.settings[name].rank) for n, layer in own.items()})
    tensors = [t for name, (own, _) in plans.items() for layer in own.values()
               for t in layer.adapter_tensors(name).values()]
    with model_transaction(model, overwrite=tensors):
        for name, (own, scalings) in plans.items():
            for n, layer in own.items():
                layer.reset_adapter(name, scalings[n])
    for name, (own, _) in plans.items():
        warn_zero_weights(own, configs[name])
    return plans[names[-1]][1] if names else {}


# --- named adapters ------------------------------------------------------------------------------------
def _peft_owned(module: nn.Module) -> bool:
    """Hugging Face PEFT's own adapter machinery (``PeftModel``, a tuner model, a tuner layer such as
    ``lora.Linear``, ``ModulesToSaveWrapper``), recognised without importing peft. liera_vision.peft's
    layers are :class:`AdapterLayer` s and not counted."""
    return (type(module).__module__.split(".")[0] == "peft" and not isinstance(module, AdapterLayer)
            and any(hasattr(module, a) for a in ("peft_config", "get_base_layer", "original_module")))


def _require_module(model, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} expects a torch nn.Module, got {type(model).__name__}")
    if _peft_owned(model):
        raise ValueError(f"{what}: {type(model).__name__} is a Hugging Face PEFT model, whose adapters PEFT manages; "
                         "use its own methods (save_pretrained, load_adapter, set_adapter, merge_and_unload; LieRA "
                         "there through liera_vision.peft.LieRAConfig), or liera_vision.core's on the model before "
                         "get_peft_model / after PEFT's merge_and_unload")


def _require_adapters(model: nn.Module, what: str) -> dict[str, AdapterLayer]:
    _require_module(model, what)
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no adapter layers; call apply_adapters first")
    return layers


def _require_name(model: nn.Module, adapter_name: str, what: str) -> AdapterConfig:
    _require_module(model, what)
    if not isinstance(adapter_name, str):
        raise ValueError(f"adapter_name must be one adapter's name (a string), got {adapter_name!r}; one adapter is "
                         "active at a time")
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise ValueError(f"{type(model).__name__} has no adapter {adapter_name!r}; it has {list(configs)}")
    return configs[adapter_name]


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter of every layer; only it (and ``modules_to_save``) trains.

    Layers without that adapter run their base weights; merged layers are unmerged first.
    """
    config = _require_name(model, adapter_name, "set_adapter")
    for layer in _require_adapters(model, "set_adapter").values():
        if layer.merged:
            layer.unmerge()
        layer.set_adapter(adapter_name)
    for name in _saved_module_names(model, config.modules_to_save):
        model.get_submodule(name).requires_grad_(True)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes with its base weights (merged adapters are unmerged); on exit every
    layer and ``requires_grad`` flag is as it was."""
    layers = list(_require_adapters(model, "disable_adapters").values())
    grads = [(p, p.requires_grad) for layer in layers for p in layer.parameters() if p is not layer.base_layer.weight]
    # per layer: was it disabled already (a nested block), which adapters were merged (merged again on exit)
    before = [(layer, layer.disable_adapters, list(layer.merged_adapters)) for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, was_disabled, merged in before:
            if not was_disabled:
                layer.enable_adapters(True)
            if merged:
                layer.merge(adapter_names=merged)
        for p, flag in grads:
            p.requires_grad_(flag)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove ``adapter_name``; layers left without adapters get their base layer back."""
    _require_name(model, adapter_name, "delete_adapter")
    layers = _require_adapters(model, "delete_adapter")
    paths = bases.module_paths(model)
    # active anywhere: layers carrying only other adapters report another name, but still point at this one
    was_active = any(layer.active_adapter == adapter_name for layer in layers.values())
    with model_transaction(model):
        for layer in layers.values():
            if adapter_name in layer.settings:
                layer.delete_adapter(adapter_name)
            if not layer.settings:
                for path in paths[id(layer)]:
                    _install(model, path, layer.base_layer)
        _forget(model, [adapter_name])
        configs = adapter_configs(model)
        if configs and (was_active or active_adapter(model) is None):
            set_adapter(model, next(iter(configs)))  # every layer, as PEFT: the first remaining adapter


# --- merging -------------------------------------------------------------------------------------------
def _check_finite(layers) -> None:
    for layer in layers:
        if layer.active_adapter in layer.settings and not torch.isfinite(layer.get_delta_weight()).all():
            raise ValueError(f"{layer.label}: merging adapter {layer.active_adapter!r} gives NaN / inf weights "
                             "(a broken adapter); nothing was merged")


def merge_adapters(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Fold the active adapter into the base weights (reversible with :func:`unmerge_adapters`).

    ``safe_merge`` checks every layer for NaN / inf before any is merged. Layers already merged are left
    as they are (one warning).
    """
    layers = [layer for layer in _require_adapters(model, "merge_adapters").values()
              if layer.active_adapter in layer.settings]
    if safe_merge:
        _check_finite(layers)
    done = [layer.label for layer in layers if layer.active_adapter in layer.merged_adapters]
    if done:
        warnings.warn(f"{len(done)} layers (e.g. {done[0]}) are already merged; left as they are", LieraWarning,
                      stacklevel=2)
    for layer in layers:
        if layer.active_adapter not in layer.merged_adapters:
            layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Restore the base weights exactly (from the cache kept by ``merge``)."""
    layers = [layer for layer in _require_adapters(model, "unmerge_adapters").values() if layer.merged]
    if not layers:
        warnings.warn(f"{type(model).__name__} holds no merged adapters; nothing to unmerge", LieraWarning,
                      stacklevel=2)
    for layer in layers:
        layer.unmerge()
    return model


def _unload(model: nn.Module, merge: bool) -> nn.Module:
    layers = _require_adapters(model, "merge_and_unload" if merge else "unload_adapters")
    paths = bases.module_paths(model)
    for layer in layers.values():
        base = layer.unload(merge=merge and layer.active_adapter in layer.settings)
        for path in paths[id(layer)]:
            _install(model, path, base)
    _forget(model)
    return model


def merge_and_unload(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Return ``model`` with plain layers carrying the active adapter merged into their weights.

    Its ``state_dict`` loads strictly into the unadapted architecture. The base parameters stay as
    ``apply_adapters`` left them (frozen).
    """
    if safe_merge:
        _check_finite(_require_adapters(model, "merge_and_unload").values())
    return _unload(model, merge=True)


def unload_adapters(model: nn.Module) -> nn.Module:
    """Drop the adapters and give back the original base layers (no merge; base parameters stay frozen)."""
    return _unload(model, merge=False)
