"""How ΔW meets W (``COMPOSITIONS``: additive, Lie-Taylor, Lie-exp) and what follows (``POST_STEPS``: DoRA).

``composed_weight`` is one custom autograd function for every composition (in the spirit of
PEFT's ``HadaWeight``): autograd through the plain expression keeps ``exp(ΔW)`` for ``exp`` and
``ΔW`` whenever ``W`` itself trains, weight-sized tensors on top of the composed weight that the
convolution keeps. Here backward recomputes what it needs from the low-rank factors and keeps at
most one weight-sized tensor: none for additive and Taylor (``W`` is the parameter, stored anyway),
the output itself for ``exp`` (the same tensor the convolution saves).

=========  =========================  ===================  =====================
name       W'                         ∂L/∂ΔW               ∂L/∂W
=========  =========================  ===================  =====================
additive   W + ΔW                     G                    G
taylor     W + W ⊙ ΔW                 G ⊙ W                G ⊙ (1 + ΔW)
exp        W ⊙ exp(ΔW)                G ⊙ W'               G ⊙ exp(ΔW)
=========  =========================  ===================  =====================

A new composition is one entry of ``COMPOSITIONS`` (its three formulas) plus its tests. With
``zero_fallback`` the Lie compositions add ``1[W = 0] ⊙ ΔW`` (zero entries train additively).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Composition:
    compose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]                 # (W, ΔW) -> W'
    grad_delta: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (G, W, W') -> ∂L/∂ΔW
    grad_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]              # (G, ΔW) -> ∂L/∂W
    keeps_output: bool  # backward needs W' (saved: the tensor the convolution keeps anyway)
    lie: bool           # multiplicative: exactly-zero entries of W cannot move


COMPOSITIONS: dict[str, Composition] = {
    "additive": Composition(lambda w, d: w + d, lambda g, w, out: g, lambda g, d: g, False, False),
    "taylor": Composition(lambda w, d: torch.addcmul(w, w, d), lambda g, w, out: g * w,
                          lambda g, d: g * (d + 1.0), False, True),
    "exp": Composition(lambda w, d: w * d.exp(), lambda g, w, out: g * out, lambda g, d: g * d.exp(), True, True),
}


def _delta(weight_shape, B, A, B0, A0, scaling) -> torch.Tensor:
    delta = B @ A
    if B0 is not None:
        # Same shapes and kernel as B @ A, so at the start (B = B0, A = A0) this is exactly 0.
        delta = delta - B0 @ A0
    return delta.mul_(scaling).view(weight_shape)


class _ComposedWeight(torch.autograd.Function):
    # forward without ctx + setup_context: the form torch.func (grad, jacrev, vmap) can transform
    generate_vmap_rule = True

    @staticmethod
    def forward(weight, B, A, B0, A0, scaling, name, zero_fallback):
        comp = COMPOSITIONS[name]
        w = weight.to(B.dtype)
        delta = _delta(weight.shape, B, A, B0, A0, scaling)
        out = comp.compose(w, delta)
        if zero_fallback and comp.lie:
            out = out + delta * (w == 0)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, B, A, B0, A0, scaling, name, zero_fallback = inputs
        ctx.name, ctx.zero_fallback, ctx.weight_dtype = name, zero_fallback, weight.dtype
        saved = (weight, B, A, B0, A0, scaling) + ((output,) if COMPOSITIONS[name].keeps_output else ())
        ctx.save_for_backward(*saved)

    @staticmethod
    def backward(ctx, grad_out):
        weight, B, A, B0, A0, scaling, *rest = ctx.saved_tensors
        comp = COMPOSITIONS[ctx.name]
        w = weight.to(B.dtype)
        grad = grad_out.to(B.dtype)
        grad_delta = comp.grad_delta(grad, w, rest[0] if rest else None)
        if ctx.zero_fallback and comp.lie:
            grad_delta = torch.where(w == 0, grad, grad_delta)
        grad_weight = grad_B = grad_A = None
        if ctx.needs_input_grad[0]:
            delta = None if ctx.name == "additive" else _delta(weight.shape, B, A, B0, A0, scaling)
            grad_weight = comp.grad_weight(grad, delta).to(ctx.weight_dtype)
        grad_matrix = grad_delta.reshape(B.shape[0], A.shape[1]) * scaling
        if ctx.needs_input_grad[1]:
            grad_B = grad_matrix @ A.t()
        if ctx.needs_input_grad[2]:
            grad_A = B.t() @ grad_matrix
        return grad_weight, grad_B, grad_A, None, None, None, None, None


def composed_weight(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, *, scaling: float | torch.Tensor,
                    composition: str, B0: torch.Tensor | None = None, A0: torch.Tensor | None = None,
                    zero_fallback: bool = False) -> torch.Tensor:
    """``W'`` from a frozen ``W`` and low-rank factors, ``ΔW = scaling · reshape(B @ A − B0 @ A0)``.

    Shapes: ``weight`` any shape with ``numel = B.shape[0] · A.shape[1]``; ``B: (rows, inner)``,
    ``A: (inner, cols)``; ``scaling`` a float or a 0-d tensor (no host sync on GPUs). The result
    has the factors' dtype (fp32 adapters beside a half-precision base compose in fp32); callers
    cast it to the input's dtype.

    Raises:
        ValueError: unknown ``composition``.
    """
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {list(COMPOSITIONS)}, got {composition!r}")
    if not torch.is_tensor(scaling):
        scaling = torch.tensor(float(scaling), dtype=B.dtype, device=B.device)
    return _ComposedWeight.apply(weight, B, A, B0, A0, scaling.to(B.dtype), composition, bool(zero_fallback))


def channel_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm per output channel (over all axes but the first): shape ``(C_out,)``."""
    return weight.flatten(1).norm(dim=1)


def dora_rescale(composed: torch.Tensor, magnitude: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """DoRA: ``W' = m · V / ‖V‖`` per output channel, the norm detached as in DoRA (arXiv 2402.09353, §4.3)."""
    norm = channel_norm(composed.detach()).clamp_min(eps)
    scale = (magnitude / norm).view(-1, *([1] * (composed.dim() - 1)))
    return composed * scale


@dataclass(frozen=True)
class PostStep:
    """What follows the composition; ``init_magnitude(W)`` starts its trainable per-output-channel vector."""

    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    init_magnitude: Callable[[torch.Tensor], torch.Tensor]


POST_STEPS: dict[str, PostStep] = {"dora": PostStep(dora_rescale, channel_norm)}
