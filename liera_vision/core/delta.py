"""How ΔW is produced: the low-rank factorizations and their initialisations (LoRA, PiSSA).

A weight ``W`` (``(C_out, C_in/groups, kh, kw)`` or ``(out, in)``) is viewed as a
``rows × cols`` matrix and ``ΔW = scaling · reshape(B @ A)`` with ``B: (rows, inner)``,
``A: (inner, cols)``:

=============  ===================  =======================  ===========
factorization  rows                 cols                     inner
=============  ===================  =======================  ===========
kernel (conv)  C_out/groups · kh    C_in · kw                rank · kh
flat (conv)    C_out                C_in/groups · kh · kw    rank
linear         out                  in                       rank
=============  ===================  =======================  ===========

``kernel`` is ``loralib``'s ``ConvLoRA`` factorization (square kernels there; non-square
kernels use the same rule with ``kh`` rows and ``kw`` columns), the one whose parameter counts
match the LieRA paper. The matrix view is a plain reshape: a full-rank ``B @ A`` can reach any
kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FactorShape:
    rows: int
    cols: int
    inner: int

    @property
    def num_params(self) -> int:
        return self.inner * (self.rows + self.cols)


def factor_shape(layer: nn.Module, rank: int, factorization: str, name: str = "") -> FactorShape:
    """Shapes of ``B`` and ``A`` for ``layer``; raises ``ValueError`` naming the layer on bad input."""
    label = f"layer '{name}'" if name else type(layer).__name__
    if isinstance(layer, nn.Linear):
        out_f, in_f = layer.weight.shape
        max_rank = min(out_f, in_f)
        shape = FactorShape(out_f, in_f, rank)
    elif isinstance(layer, nn.Conv2d):
        c_out, c_in_g, kh, kw = layer.weight.shape
        groups = layer.groups
        max_rank = min(c_out, c_in_g * kh * kw)
        if factorization == "kernel":
            shape = FactorShape((c_out // groups) * kh, c_in_g * groups * kw, rank * kh)
        elif factorization == "flat":
            shape = FactorShape(c_out, c_in_g * kh * kw, rank)
        else:
            raise ValueError(f"unknown factorization {factorization!r} for {label}")
    else:
        raise ValueError(f"{label}: unsupported target type {type(layer).__name__}; "
                         "adapters wrap nn.Conv2d and nn.Linear")
    if rank > max_rank:
        raise ValueError(f"{label}: rank {rank} exceeds the largest rank its weight "
                         f"{tuple(layer.weight.shape)} can have ({max_rank}); use rank <= {max_rank} "
                         "or exclude the layer")
    return shape


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters live in fp32 beside a half-precision base (and in fp64 beside an fp64 one)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def init_lora_(lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
    """LoRA / loralib initialisation: ``A`` Kaiming-uniform, ``B`` zero, so ``B @ A = 0``."""
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
    nn.init.zeros_(lora_B)


@torch.no_grad()
def init_pissa_(lora_A: torch.Tensor, lora_B: torch.Tensor, weight_matrix: torch.Tensor, scaling: float) -> None:
    """PiSSA initialisation from the top singular triplets of the reshaped weight.

    ``scaling · B @ A`` equals the rank-``inner`` principal part of ``weight_matrix``. When the
    matrix has fewer singular values than ``inner`` (e.g. the 7-row view of a depthwise kernel
    under the ``kernel`` factorization) the remaining components start as in LoRA (``A`` random,
    ``B`` zero) so that they still receive gradients.
    """
    init_lora_(lora_A, lora_B)
    u, s, vh = torch.linalg.svd(weight_matrix.to(torch.float64), full_matrices=False)
    k = min(lora_A.shape[0], s.numel())
    root = (s[:k] / scaling).sqrt()
    lora_B[:, :k] = (u[:, :k] * root).to(lora_B.dtype)
    lora_A[:k] = (root[:, None] * vh[:k]).to(lora_A.dtype)


def rank_dropout_mask(inner: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli keep-mask over the inner (rank) dimension, rescaled by ``1 / (1 - p)``."""
    keep = torch.rand(inner, device=like.device) >= p
    return keep.to(like.dtype) / (1.0 - p)
