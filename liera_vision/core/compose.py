"""How ΔW meets W: additive, Lie-Taylor, Lie-exact; and DoRA's renormalisation.

``composed_weight`` is a custom autograd function (in the spirit of PEFT's ``HadaWeight``):
autograd through the plain expression keeps ``exp(ΔW)`` for ``exp`` and ``ΔW`` whenever ``W``
itself trains, weight-sized tensors on top of the composed weight that the convolution keeps.
Here backward recomputes what it needs from the low-rank factors and keeps at most one
weight-sized tensor: none for additive and Taylor (``W`` is the parameter, stored anyway), the
output itself for ``exp`` (the same tensor the convolution saves).

=========  =========================  ====================================
mode       W'                         ∂L/∂ΔW
=========  =========================  ====================================
additive   W + ΔW                     G
taylor     W + W ⊙ ΔW                 G ⊙ W
exp        W ⊙ exp(ΔW)                G ⊙ W'
=========  =========================  ====================================

With ``zero_fallback`` the Lie modes add ``1[W = 0] ⊙ ΔW`` (zero entries train additively).
"""

from __future__ import annotations

import torch

MODES = ("additive", "taylor", "exp")


def _delta(weight_shape, B, A, B0, A0, scaling: float) -> torch.Tensor:
    delta = B @ A
    if B0 is not None:
        # Same shapes and kernel as B @ A, so at initialisation (B = B0, A = A0) this is exactly 0.
        delta = delta - B0 @ A0
    return delta.mul_(scaling).view(weight_shape)


class _ComposedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, B, A, B0, A0, scaling, mode, zero_fallback):
        w = weight.to(B.dtype)
        delta = _delta(weight.shape, B, A, B0, A0, scaling)
        if mode == "additive":
            out = w + delta
        elif mode == "taylor":
            out = torch.addcmul(w, w, delta)
        else:
            out = w * delta.exp()
        if zero_fallback and mode != "additive":
            out = out + delta * (w == 0)
        ctx.scaling, ctx.mode, ctx.zero_fallback = scaling, mode, zero_fallback
        ctx.weight_dtype = weight.dtype
        if mode == "exp":
            ctx.save_for_backward(weight, B, A, B0, A0, out)
        else:
            ctx.save_for_backward(weight, B, A, B0, A0)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight, B, A, B0, A0, *rest = ctx.saved_tensors
        mode, zero_fallback = ctx.mode, ctx.zero_fallback
        w = weight.to(B.dtype)
        grad = grad_out.to(B.dtype)
        if mode == "additive":
            grad_delta = grad
        elif mode == "taylor":
            grad_delta = grad * (torch.where(w == 0, 1.0, w) if zero_fallback else w)
        else:
            out = rest[0]
            grad_delta = grad * (torch.where(w == 0, 1.0, out) if zero_fallback else out)

        grad_weight = grad_B = grad_A = None
        if ctx.needs_input_grad[0]:
            if mode == "additive":
                grad_weight = grad
            else:
                delta = _delta(weight.shape, B, A, B0, A0, ctx.scaling)
                grad_weight = grad * (delta.add_(1.0) if mode == "taylor" else delta.exp_())
            grad_weight = grad_weight.to(ctx.weight_dtype)
        grad_matrix = grad_delta.reshape(B.shape[0], A.shape[1]).mul(ctx.scaling)
        if ctx.needs_input_grad[1]:
            grad_B = grad_matrix @ A.t()
        if ctx.needs_input_grad[2]:
            grad_A = B.t() @ grad_matrix
        return grad_weight, grad_B, grad_A, None, None, None, None, None


def composed_weight(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, *, scaling: float, mode: str,
                    B0: torch.Tensor | None = None, A0: torch.Tensor | None = None,
                    zero_fallback: bool = False) -> torch.Tensor:
    """``W'`` from a frozen ``W`` and low-rank factors, ``ΔW = scaling · reshape(B @ A − B0 @ A0)``.

    The result has the factors' dtype (fp32 adapters beside a half-precision base compose in
    fp32); callers cast it to the input's dtype.
    """
    if mode not in MODES:
        raise ValueError(f"composition mode must be one of {MODES}, got {mode!r}")
    return _ComposedWeight.apply(weight, B, A, B0, A0, float(scaling), mode, bool(zero_fallback))


def channel_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm per output channel (over all axes but the first)."""
    return weight.flatten(1).norm(dim=1)


def dora_rescale(composed: torch.Tensor, magnitude: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """DoRA: ``W' = m · V / ‖V‖`` per output channel, the norm detached as in DoRA (§4.3)."""
    norm = channel_norm(composed.detach()).clamp_min(eps)
    scale = (magnitude / norm).view(-1, *([1] * (composed.dim() - 1)))
    return composed * scale
