"""``AdapterLayer``: the wrapper around a frozen layer, holding named adapters as PEFT's tuner layers do.

One class serves every method: an adapter is a point on the three axes of :class:`AdapterConfig`
(initialisation, composition, post-step), looked up in their registries. The wrapped module stays
untouched as ``base_layer`` (its geometry — stride, padding, padding mode, dilation, groups, bias —
is used as is), so ``merge_and_unload`` can hand it back.

Per adapter name (PEFT's layout; ``lora_A["default"]`` …):

=================  ==========  =========================================================
attribute          kind        what
=================  ==========  =========================================================
``lora_A``         parameter   ``(inner, cols)`` factor
``lora_B``         parameter   ``(rows, inner)`` factor
``lora_magnitude`` parameter   DoRA's per-output-channel magnitude ``(C_out,)``
``lora_A_start``   buffer      frozen starting factors of relative inits (PiSSA), ``ΔW ∝ BA − B₀A₀``
``lora_B_start``   buffer
``lora_scaling``   buffer      the resolved ``alpha / rank`` (0-d), saved with every artefact
=================  ==========  =========================================================

One adapter is active at a time (``set_adapter``); ``enable_adapters(False)`` runs the base layer.
``merge`` folds the active adapter into ``base_layer.weight`` and caches the weight it replaced, so
``unmerge`` is exact (no division by ``1 + ΔW``). ``weight`` is the effective (adapted) weight,
``bias`` the base bias, and other attributes are read from ``base_layer``: parents that read a
child's tensors (``nn.MultiheadAttention.out_proj``) see the adapted layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LieraWarning
from . import bases
from .compose import POST_STEPS, composed_weight
from .config import AdapterConfig
from .delta import INITS, FactorShape, adapter_dtype, factor_shape, rank_dropout_mask
from .scale import ScaleInput, resolve_scalings

# torch 2.1 inductor bug: see AdapterLayer.forward
_INDUCTOR_LOSES_ADAPTER_GRADS = tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 2)

# 0.1.0 names of the tensors of the (single, unnamed) adapter -> today's attribute
LEGACY_NAMES = {"lora_A": "lora_A", "lora_B": "lora_B", "dora_magnitude": "lora_magnitude",
                "pissa_A0": "lora_A_start", "pissa_B0": "lora_B_start"}


class BufferDict(nn.Module):
    """Buffers keyed by adapter name (torch has ``ParameterDict`` but no buffer counterpart)."""

    def __init__(self, persistent: bool = True) -> None:
        super().__init__()
        self.persistent = persistent

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if key in self:
            delattr(self, key)
        self.register_buffer(key, value, persistent=self.persistent)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        delattr(self, key)

    def __contains__(self, key: object) -> bool:
        return any(name == key for name, _ in self.named_buffers(recurse=False))

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self):
        return iter(self.keys())

    def get(self, key: str, default=None):
        return dict(self.named_buffers(recurse=False)).get(key, default)

    def keys(self) -> list[str]:
        return [name for name, _ in self.named_buffers(recurse=False)]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.named_buffers(recurse=False))

    def values(self) -> list[torch.Tensor]:
        return [t for _, t in self.named_buffers(recurse=False)]


@dataclass(frozen=True)
class AdapterSettings:
    """The per-layer resolution of one adapter's config."""

    config: AdapterConfig
    rank: int
    alpha: float | str
    factors: FactorShape


class AdapterLayer(nn.Module):
    """``base_layer`` with weight ``W'`` = post(compose(W, ΔW)), ``ΔW = scaling · reshape(B @ A [− B₀A₀])``.

    Args:
        base_layer: an ``nn.Linear``, ``nn.Conv1d/2d/3d`` or transformers ``Conv1D`` (frozen by
            :func:`~liera_vision.core.apply_adapters`, not here).
        config: the first adapter's config (``None``: add adapters later with :meth:`add_adapter`).
        name: the layer's name in its model (for messages).
        adapter_name: name of the first adapter.
        rank, alpha: per-layer overrides of ``config.rank`` / ``config.alpha`` (rank_pattern / alpha_pattern).
        scaling: the resolved ``alpha / rank``; ``None`` resolves it from this layer alone.

    Raises:
        ValueError: unsupported layer, a rank above the weight's rank, an invalid adapter name.
    """

    adapter_layer_names = ("lora_A", "lora_B", "lora_magnitude")  # trainable, per adapter (PEFT's names)
    other_param_names = ("lora_A_start", "lora_B_start", "lora_scaling", "settings")
    tensor_names = ("lora_A", "lora_B", "lora_magnitude", "lora_A_start", "lora_B_start", "lora_scaling")

    def __init__(self, base_layer: nn.Module, config: AdapterConfig | None = None, name: str = "",
                 adapter_name: str = "default", *, rank: int | None = None, alpha: float | str | None = None,
                 scaling: float | None = None) -> None:
        super().__init__()
        if isinstance(base_layer, AdapterLayer):
            raise ValueError(f"layer '{name}' is already adapted; add a second adapter with add_adapter() or "
                             "merge_and_unload first")
        kind = bases.base_kind(base_layer)
        if kind is None:
            raise ValueError(f"layer '{name}': unsupported type {type(base_layer).__name__}; adapters wrap "
                             f"{bases.SUPPORTED}")
        self.base_layer = base_layer
        self.kind = kind
        self.layer_name = name
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_magnitude = nn.ParameterDict()
        self.lora_A_start = BufferDict()
        self.lora_B_start = BufferDict()
        self.lora_scaling = BufferDict()
        self._unmerged = BufferDict(persistent=False)  # weight under each merged adapter: exact unmerge
        self.settings: dict[str, AdapterSettings] = {}
        self._active_adapter: list[str] = []
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.train(base_layer.training)  # a new module starts in training mode; inside an eval model it must not
        if config is not None:
            self.add_adapter(adapter_name, config, rank=rank, alpha=alpha, scaling=scaling)

    # --- the base weight in canonical layout (out, in/groups, *kernel) -------------------------------
    def _canonical(self, weight: torch.Tensor) -> torch.Tensor:
        return bases.to_canonical(self.kind, weight)

    @property
    def label(self) -> str:
        return f"layer '{self.layer_name}'" if self.layer_name else type(self.base_layer).__name__

    # --- named adapters -----------------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: AdapterConfig, *, rank: int | None = None,
                    alpha: float | str | None = None, scaling: float | None = None) -> None:
        """Add adapter ``adapter_name`` (initialised to the identity). It becomes active if none is."""
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name \
                or any(hasattr(container, adapter_name) for container in (self.lora_A, self.lora_scaling)):
            raise ValueError(f"adapter name must be a non-empty string without '.' that is not an attribute of a torch "
                             f"module (such as 'train', 'to', 'keys'), got {adapter_name!r}")
        if adapter_name in self.settings:
            raise ValueError(f"{self.label} already has an adapter named {adapter_name!r}")
        if self.merged:
            raise ValueError(f"{self.label} holds merged adapters {self.merged_adapters}: a new adapter would start "
                             "from the merged weight; unmerge first")
        rank = config.rank if rank is None else rank
        alpha = config.alpha if alpha is None else alpha
        weight = self._canonical(self.base_layer.weight)
        shape = factor_shape(tuple(weight.shape), bases.groups_of(self.base_layer), rank, config.factorization,
                             self.label)
        if scaling is None:
            scaling = resolve_scalings({adapter_name: ScaleInput(weight, bases.label(self.base_layer), alpha, rank)})[
                adapter_name]
        factory = dict(device=weight.device, dtype=adapter_dtype(weight))
        self.lora_A[adapter_name] = nn.Parameter(torch.empty(shape.inner, shape.cols, **factory))
        self.lora_B[adapter_name] = nn.Parameter(torch.empty(shape.rows, shape.inner, **factory))
        if INITS[config.init].relative:
            self.lora_A_start[adapter_name] = torch.empty(shape.inner, shape.cols, **factory)
            self.lora_B_start[adapter_name] = torch.empty(shape.rows, shape.inner, **factory)
        if config.post is not None:
            self.lora_magnitude[adapter_name] = nn.Parameter(torch.empty(weight.shape[0], **factory))
        self.lora_scaling[adapter_name] = torch.tensor(float(scaling), **factory)
        self.settings[adapter_name] = AdapterSettings(config, rank, alpha, shape)
        self.reset_adapter(adapter_name)
        if not self._active_adapter:
            self.set_adapter(adapter_name)
        else:
            self._set_trainable(adapter_name, False)

    @torch.no_grad()
    def reset_adapter(self, adapter_name: str, scaling: float | None = None) -> None:
        """(Re-)initialise ``adapter_name`` from the current base weight: identity again.

        Call it after loading new base weights (PiSSA's factors and DoRA's magnitude depend on W);
        :func:`~liera_vision.core.reset_adapters` does it for a whole model and also recomputes
        weight-derived scales (``scaling``; ``None`` keeps the current one).
        """
        if self.merged:
            raise ValueError(f"{self.label} holds merged adapters {self.merged_adapters}; unmerge before resetting "
                             f"adapter {adapter_name!r}")
        settings = self.settings[adapter_name]
        if scaling is not None:
            self.lora_scaling[adapter_name].fill_(float(scaling))
        weight = self._canonical(self.base_layer.weight.detach())
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        INITS[settings.config.init].init_(A, B, weight.reshape(settings.factors.rows, settings.factors.cols),
                                          float(self.lora_scaling[adapter_name]))
        if adapter_name in self.lora_A_start:
            self.lora_A_start[adapter_name].copy_(A)
            self.lora_B_start[adapter_name].copy_(B)
        if adapter_name in self.lora_magnitude:
            magnitude = self.lora_magnitude[adapter_name]
            magnitude.copy_(POST_STEPS[settings.config.post].init_magnitude(weight.to(magnitude.dtype)))

    def reset_parameters(self) -> None:
        """Re-initialise every adapter from the current base weight (scales unchanged)."""
        for adapter_name in self.settings:
            self.reset_adapter(adapter_name)

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active_adapter)

    @property
    def active_adapter(self) -> str | None:
        return self._active_adapter[0] if self._active_adapter else None

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def _require(self, adapter_name: str) -> None:
        if adapter_name not in self.settings:
            raise ValueError(f"{self.label} has no adapter {adapter_name!r}; it has {list(self.settings)}")

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The parameters and buffers of ``adapter_name`` by attribute (``lora_A``, …, ``lora_scaling``)."""
        return {attr: getattr(self, attr)[adapter_name] for attr in self.tensor_names
                if adapter_name in getattr(self, attr)}

    def _set_trainable(self, adapter_name: str, trainable: bool) -> None:
        for attr in self.adapter_layer_names:
            params = getattr(self, attr)
            if adapter_name in params:
                params[adapter_name].requires_grad_(trainable)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_names`` (one name, or a list of one) the active adapter; only it trains (none with
        ``inference_mode``). A name this layer does not carry makes it run its base weight, as PEFT's layers
        do when a model's adapters target different layers."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(f"{self.label}: exactly one adapter can be active (got {names}); compositions of Lie "
                             "updates do not add up like LoRA's, so combine adapters by merging them one by one")
        for name in self.settings:
            self._set_trainable(name, bool(names) and name == names[0] and not inference_mode)
        self._active_adapter = names

    def enable_adapters(self, enabled: bool) -> None:
        """``False``: run the base layer as it was (merged adapters are unmerged); ``True``: the active adapter."""
        if enabled:
            if self._active_adapter:
                self.set_adapter(self._active_adapter)
            self._disable_adapters = False
            return
        if self.merged:
            self.unmerge()
        for name in self.settings:
            self._set_trainable(name, False)
        self._disable_adapters = True

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name`` (a no-op if this layer does not carry it); if it was active, the first
        remaining adapter (if any) becomes active."""
        if adapter_name not in self.settings:
            return
        if adapter_name in self.merged_adapters:
            raise ValueError(f"{self.label}: adapter {adapter_name!r} is merged; unmerge before deleting it")
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        if self._active_adapter == [adapter_name]:
            self._active_adapter = []
            if self.settings:
                self.set_adapter(next(iter(self.settings)))

    # --- the weight ----------------------------------------------------------------------------------
    def _weight_under(self, adapter_name: str) -> torch.Tensor:
        """The base weight ``adapter_name`` composes with (the cached one once it is merged)."""
        return self._unmerged[adapter_name] if adapter_name in self.merged_adapters else self.base_layer.weight

    def _factors(self, adapter_name: str, dropout: bool):
        B, A = self.lora_B[adapter_name], self.lora_A[adapter_name]
        B0 = self.lora_B_start.get(adapter_name)
        A0 = self.lora_A_start[adapter_name] if B0 is not None else None
        p = self.settings[adapter_name].config.dropout
        if dropout and p > 0:
            mask = rank_dropout_mask(B.shape[1], p, B)
            B = B * mask
            B0 = B0 * mask if B0 is not None else None
        return B, A, B0, A0

    def delta(self, adapter_name: str | None = None) -> torch.Tensor:
        """ΔW, the Lie-algebra element for LieRA (base weight's shape, no dropout, no grad); independent of merging."""
        adapter_name = self._name(adapter_name)
        with torch.no_grad():
            B, A, B0, A0 = self._factors(adapter_name, dropout=False)
            d = B @ A if B0 is None else B @ A - B0 @ A0
            canonical = (d * self.lora_scaling[adapter_name]).view(self._canonical(self.base_layer.weight).shape)
            return bases.from_canonical(self.kind, canonical)

    def effective_weight(self, adapter_name: str | None = None, dropout: bool = False) -> torch.Tensor:
        """``W'`` of ``adapter_name`` (default: the active one) in the base weight's layout and dtype.

        Differentiable w.r.t. the adapter's parameters (and W if it trains). Computed on the weight
        the adapter composes with, also after it was merged.
        """
        adapter_name = self._name(adapter_name)
        settings = self.settings[adapter_name]
        weight = self._weight_under(adapter_name)
        B, A, B0, A0 = self._factors(adapter_name, dropout)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            w = composed_weight(self._canonical(weight), B, A, B0=B0, A0=A0, scaling=self.lora_scaling[adapter_name],
                                composition=settings.config.composition,
                                zero_fallback=settings.config.zero_weight_fallback)
            if settings.config.post is not None:
                w = POST_STEPS[settings.config.post].apply(w, self.lora_magnitude[adapter_name])
        return bases.from_canonical(self.kind, w).to(weight.dtype)

    def get_delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """The additive equivalent ``W' − W`` of ``adapter_name`` (what merging adds); independent of merging."""
        adapter_name = self._name(adapter_name)
        with torch.no_grad():
            return self.effective_weight(adapter_name) - self._weight_under(adapter_name)

    def _name(self, adapter_name: str | None) -> str:
        if adapter_name is None:
            if not self._active_adapter:
                raise ValueError(f"{self.label} has no active adapter")
            return self._active_adapter[0]
        self._require(adapter_name)
        return adapter_name

    def _runs_adapter(self) -> bool:
        active = self.active_adapter
        return active in self.settings and not self._disable_adapters and active not in self.merged_adapters

    @property
    def weight(self) -> torch.Tensor:
        """The weight the layer computes with: ``W'`` of the active adapter (differentiable), else the base weight."""
        return self.effective_weight() if self._runs_adapter() else self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("weight", "bias", "base_layer"):
                raise
            base = super().__getattr__("base_layer")
            return getattr(base, name)  # in_features, kernel_size, stride … of the wrapped layer

    def __setattr__(self, name: str, value) -> None:
        if name in ("weight", "bias"):
            raise AttributeError(f"{self.label}: '{name}' of an adapter layer is computed (the adapted weight W' and "
                                 f"the base bias); set or edit base_layer.{name} instead")
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._runs_adapter():
            return self.base_layer(x)
        return bases.forward_with(self.base_layer, x, self.effective_weight(dropout=self.training))

    if _INDUCTOR_LOSES_ADAPTER_GRADS:
        # torch 2.1's inductor returns uninitialised gradients (values up to 1e36) for the factors of an
        # adapted convolution compiled into one graph with the layers after it; eager and aot_eager are
        # right, torch 2.2.2 and 2.3.1 are right (docs/core.md, "Things to know"). There the adapted layers
        # run eagerly between compiled regions: correct, a little slower.
        forward = torch.compiler.disable(forward)

    # --- merging --------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write ``W'`` of ``adapter_names`` (default: the active adapter) into ``base_layer.weight``, in order;
        adapters this layer does not carry are passed over.

        The replaced weight is cached, so :meth:`unmerge` restores it exactly. ``safe_merge`` checks
        the merged weight for NaN / inf first.
        """
        for name in adapter_names if adapter_names is not None else self.active_adapters:
            if name not in self.settings:
                continue
            if name in self.merged_adapters:
                warnings.warn(f"{self.label}: adapter {name!r} is already merged; nothing to do", LieraWarning,
                              stacklevel=2)
                continue
            merged = self.effective_weight(name)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"{self.label}: merging adapter {name!r} gives NaN / inf weights (a broken adapter)")
            self._unmerged[name] = self.base_layer.weight.detach().clone()
            self.base_layer.weight.copy_(merged)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly, undoing every merge (last first)."""
        if not self.merged_adapters:
            warnings.warn(f"{self.label} is not merged; nothing to do", LieraWarning, stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.base_layer.weight.copy_(self._unmerged[name])
            del self._unmerged[name]

    @torch.no_grad()
    def unload(self, merge: bool = True) -> nn.Module:
        """The base layer, with the active adapter folded in when ``merge`` (otherwise with the original W)."""
        if merge and self._active_adapter and self._active_adapter[0] not in self.merged_adapters:
            self.merge()
        if not merge and self.merged:
            self.unmerge()
        for name in list(self._unmerged):
            del self._unmerged[name]
        self.merged_adapters = []
        return self.base_layer

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.merged:
            warnings.warn(f"state_dict of {self.label} while adapters {self.merged_adapters} are merged: its base "
                          "weight holds W', which an unmerged model would adapt a second time; unmerge first (or "
                          "merge_and_unload for a plain model)", LieraWarning, stacklevel=4)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    # --- 0.1.0 state dicts ------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy = [old for old in LEGACY_NAMES if prefix + old in state_dict]
        if legacy and len(self.settings) == 1:  # 0.1.0 held one unnamed adapter: it is this layer's only one
            name = next(iter(self.settings))
            for old in legacy:
                state_dict[f"{prefix}{LEGACY_NAMES[old]}.{name}"] = state_dict.pop(prefix + old)
            # 0.1.0 kept alpha / rank in the config only, where alpha=None meant alpha = rank (a config
            # rebuilt without from_dict, e.g. by LightningCLI from checkpoint hyper-parameters, reads it as "auto")
            alpha = self.settings[name].alpha
            scaling = 1.0 if isinstance(alpha, str) else alpha / self.settings[name].rank
            state_dict.setdefault(f"{prefix}lora_scaling.{name}", torch.full_like(self.lora_scaling[name], scaling))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        rows = []
        for name, s in self.settings.items():
            flags = [f for f, on in (("active", name in self._active_adapter), ("merged", name in self.merged_adapters))
                     if on]
            rows.append(f"{name}: {s.config.name.rsplit('-r', 1)[0]} r={s.rank} B={s.factors.rows}x{s.factors.inner} "
                        f"A={s.factors.inner}x{s.factors.cols} scaling={float(self.lora_scaling[name]):.4g}"
                        + (f" ({', '.join(flags)})" if flags else ""))
        return "; ".join(rows) + (" [disabled]" if self._disable_adapters else "")
