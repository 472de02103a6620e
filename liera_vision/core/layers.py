"""The wrapper around a frozen ``nn.Conv2d`` / ``nn.Linear``.

One class serves every method: a method is a pair (delta generator, composition rule),
optionally followed by DoRA's renormalisation. The wrapped module stays untouched as
``base_layer`` (its geometry — stride, padding, padding mode, dilation, groups, bias — is used
as is), so ``merge_and_unload`` can hand it back.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .compose import channel_norm, composed_weight, dora_rescale
from .config import AdapterConfig
from .delta import adapter_dtype, factor_shape, init_lora_, init_pissa_, rank_dropout_mask


class AdapterLayer(nn.Module):
    """``base_layer`` with weight ``W'`` = compose(W, ΔW) [→ DoRA], ``ΔW`` low-rank.

    Parameters (trainable): ``lora_A``, ``lora_B`` and, for DoRA, ``dora_magnitude``.
    Buffers (saved with the adapter): ``pissa_A0``, ``pissa_B0`` for PiSSA.
    """

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, name: str = "") -> None:
        super().__init__()
        if isinstance(base_layer, AdapterLayer):
            raise ValueError(f"layer '{name}' is already adapted; applying adapters twice to one layer "
                             "is not supported (merge_and_unload first)")
        shape = factor_shape(base_layer, config.rank, config.factorization, name)
        self.base_layer = base_layer.requires_grad_(False)  # W is frozen; only the adapter learns
        self.layer_name = name
        self.factors = shape
        self.scaling = config.scaling
        self.dropout = float(config.dropout)
        self.mode = "additive" if config.method == "lora" else config.composition
        self.zero_fallback = config.zero_weight_fallback
        self.variant = config.variant
        self.merged = False

        weight = base_layer.weight
        factory = dict(device=weight.device, dtype=adapter_dtype(weight))
        self.lora_A = nn.Parameter(torch.empty(shape.inner, shape.cols, **factory))
        self.lora_B = nn.Parameter(torch.empty(shape.rows, shape.inner, **factory))
        if config.variant == "pissa":
            self.register_buffer("pissa_A0", torch.empty_like(self.lora_A.detach()))
            self.register_buffer("pissa_B0", torch.empty_like(self.lora_B.detach()))
        else:
            self.pissa_A0 = self.pissa_B0 = None
        magnitude = config.variant == "dora"
        self.dora_magnitude = nn.Parameter(torch.empty(weight.shape[0], **factory)) if magnitude else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise the adapter from the current base weight: identity again.

        Call it after loading new base weights into an adapted model: PiSSA's factors and DoRA's
        magnitude depend on W.
        """
        if self.merged:
            raise ValueError(f"layer '{self.layer_name}': unmerge before reset_parameters()")
        weight = self.base_layer.weight.detach()
        if self.pissa_A0 is not None:
            init_pissa_(self.lora_A, self.lora_B, weight.reshape(self.factors.rows, self.factors.cols), self.scaling)
            self.pissa_A0.copy_(self.lora_A)
            self.pissa_B0.copy_(self.lora_B)
        else:
            init_lora_(self.lora_A, self.lora_B)
        if self.dora_magnitude is not None:
            self.dora_magnitude.copy_(channel_norm(weight.to(self.dora_magnitude.dtype)))

    # --- the weight ------------------------------------------------------------------------
    def delta(self) -> torch.Tensor:
        """ΔW (weight-shaped, the Lie-algebra element for LieRA), without dropout."""
        with torch.no_grad():
            d = self.lora_B @ self.lora_A
            if self.pissa_B0 is not None:
                d = d - self.pissa_B0 @ self.pissa_A0
            return (d * self.scaling).view(self.base_layer.weight.shape)

    def effective_weight(self, dropout: bool = False) -> torch.Tensor:
        """W' in the base weight's dtype; differentiable w.r.t. the adapter parameters."""
        weight = self.base_layer.weight
        if self.merged:
            return weight
        B, B0 = self.lora_B, self.pissa_B0
        with torch.autocast(device_type=weight.device.type, enabled=False):
            if dropout and self.dropout > 0:
                mask = rank_dropout_mask(self.factors.inner, self.dropout, B)
                B = B * mask
                B0 = B0 * mask if B0 is not None else None
            w = composed_weight(weight, B, self.lora_A, B0=B0, A0=self.pissa_A0, scaling=self.scaling,
                                mode=self.mode, zero_fallback=self.zero_fallback)
            if self.dora_magnitude is not None:
                w = dora_rescale(w, self.dora_magnitude)
        return w.to(weight.dtype)

    def get_delta_weight(self) -> torch.Tensor:
        """The additive equivalent ``W' − W`` (what merging adds to the base weight)."""
        with torch.no_grad():
            return self.effective_weight() - self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        weight = self.effective_weight(dropout=self.training)
        base = self.base_layer
        if type(base).forward is nn.Conv2d.forward:
            return base._conv_forward(x, weight, base.bias)
        if type(base).forward is nn.Linear.forward:
            return F.linear(x, weight, base.bias)
        # subclasses with their own forward (timm's Conv2dSame, StdConv2d …) run it with W' swapped in
        return torch.func.functional_call(base, {"weight": weight}, (x,))

    # --- merging ---------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Write W' into ``base_layer.weight``; the original is cached, so ``unmerge`` is exact."""
        if self.merged:
            warnings.warn(f"layer '{self.layer_name}' is already merged; nothing to do", stacklevel=2)
            return
        merged = self.effective_weight()
        self.register_buffer("_unmerged_weight", self.base_layer.weight.detach().clone(), persistent=False)
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn(f"layer '{self.layer_name}' is not merged; nothing to do", stacklevel=2)
            return
        self.base_layer.weight.copy_(self._unmerged_weight)
        del self._unmerged_weight
        self.merged = False

    @torch.no_grad()
    def unload(self, merge: bool = True) -> nn.Module:
        """The base layer, with W' folded in when ``merge`` (otherwise with the original W)."""
        if merge and not self.merged:
            self.merge()
        if not merge and self.merged:
            self.unmerge()
        self.__dict__["_buffers"].pop("_unmerged_weight", None)
        self.merged = False
        return self.base_layer

    def extra_repr(self) -> str:
        variant = f"{self.variant}+" if self.variant else ""
        return (f"{variant}{self.mode}, rank_inner={self.factors.inner}, B={self.factors.rows}x{self.factors.inner}, "
                f"A={self.factors.inner}x{self.factors.cols}, scaling={self.scaling:g}, merged={self.merged}")
