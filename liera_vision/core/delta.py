"""How ΔW is produced and initialised: the low-rank factorizations and the initialisations.

A weight ``W`` — ``(C_out, C_in/g, k_1, …, k_N)`` for an N-d convolution with ``g`` groups,
``(out, in)`` for a linear layer — is viewed as a ``rows × cols`` matrix and
``ΔW = scaling · reshape(B @ A)`` with ``B: (rows, inner)``, ``A: (inner, cols)``:

=============  ===================  ===============================  ============
factorization  rows                 cols                             inner
=============  ===================  ===============================  ============
kernel (conv)  C_out/g · k_1        C_in · k_2 ⋯ k_N                 rank · k_1
flat (conv)    C_out                C_in/g · k_1 ⋯ k_N               rank
linear         out                  in                               rank
=============  ===================  ===============================  ============

``kernel`` is ``loralib``'s ``ConvLoRA`` rule (``A: (r·k, C_in·k)``, ``B: (C_out/g·k, r·k)`` for a
square 2-d kernel ``k × k``; the rule behind the LieRA paper's parameter counts). loralib applies
the same shapes to Conv1d/Conv3d, where ``rows · cols`` no longer equals the kernel's size; the
rule here instead sends the first spatial size to the rows and the others to the columns, which is
loralib's rule exactly for 2-d kernels (square or not) and has the right size for every N. Adapter
parameters per layer: ``inner · (rows + cols)``, e.g. ``r·k_1·(C_out/g·k_1 + C_in·k_2⋯k_N)``. The
matrix view is a plain reshape: a full-rank ``B @ A`` reaches any kernel.

Initialisations (``INITS``): ``lora`` (A Kaiming-uniform, B zero: ΔW = 0) and ``pissa`` (the top
singular triplets of the ``rows × cols`` view; the update is taken relative to that start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

FACTORIZATIONS = ("kernel", "flat")


@dataclass(frozen=True)
class FactorShape:
    """``B: (rows, inner)``, ``A: (inner, cols)``."""

    rows: int
    cols: int
    inner: int


def factor_shape(weight_shape: tuple[int, ...], groups: int, rank: int, factorization: str,
                 label: str = "layer") -> FactorShape:
    """Factor shapes for a weight in the canonical layout ``(out, in/groups, *kernel)``.

    Raises:
        ValueError: unknown factorization, or ``rank`` above the rank the weight can have
            (``min(C_out, C_in/g · k_1⋯k_N)``), naming ``label``.
    """
    c_out, c_in_g, *kernel = weight_shape
    fan_in = c_in_g * math.prod(kernel)
    max_rank = min(c_out, fan_in)
    if rank > max_rank:
        raise ValueError(f"{label}: rank {rank} exceeds the largest rank its weight {tuple(weight_shape)} can have "
                         f"({max_rank}); use rank <= {max_rank} (rank_pattern) or exclude the layer")
    if factorization == "flat" or not kernel:
        return FactorShape(c_out, fan_in, rank)
    if factorization == "kernel":
        k1, rest = kernel[0], math.prod(kernel[1:])
        return FactorShape((c_out // groups) * k1, c_in_g * groups * rest, rank * k1)
    raise ValueError(f"{label}: unknown factorization {factorization!r}; expected one of {FACTORIZATIONS}")


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters live in fp32 beside a half-precision base (and in fp64 beside an fp64 one)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def init_lora_(lora_A: torch.Tensor, lora_B: torch.Tensor, weight_matrix: torch.Tensor, scaling: float) -> None:
    """LoRA / loralib initialisation: ``A`` Kaiming-uniform, ``B`` zero, so ``B @ A = 0``."""
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
    nn.init.zeros_(lora_B)


@torch.no_grad()
def init_pissa_(lora_A: torch.Tensor, lora_B: torch.Tensor, weight_matrix: torch.Tensor, scaling: float) -> None:
    """PiSSA initialisation from the top singular triplets of ``weight_matrix`` (``rows × cols``).

    ``scaling · B @ A`` equals the rank-``inner`` principal part of ``weight_matrix``. When the
    matrix has fewer singular values than ``inner`` (e.g. the 7-row view of a depthwise 7×7 kernel
    under the ``kernel`` factorization) the remaining components start as in LoRA (``A`` random,
    ``B`` zero) so that they still receive gradients.
    """
    init_lora_(lora_A, lora_B, weight_matrix, scaling)
    u, s, vh = torch.linalg.svd(weight_matrix.to(torch.float64), full_matrices=False)
    k = min(lora_A.shape[0], s.numel())
    root = (s[:k] / scaling).sqrt()
    lora_B[:, :k] = (u[:, :k] * root).to(lora_B.dtype)
    lora_A[:k] = (root[:, None] * vh[:k]).to(lora_A.dtype)


@dataclass(frozen=True)
class Init:
    """How the factors start. ``relative``: ΔW is taken relative to the start (``BA − B₀A₀``),
    whose factors are kept frozen (``lora_A_start`` / ``lora_B_start``)."""

    init_: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], None]
    relative: bool


INITS: dict[str, Init] = {
    "lora": Init(init_lora_, relative=False),
    "pissa": Init(init_pissa_, relative=True),
}


def rank_dropout_mask(inner: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli keep-mask over the inner (rank) dimension, rescaled by ``1 / (1 - p)``."""
    keep = torch.rand(inner, device=like.device) >= p
    return keep.to(like.dtype) / (1.0 - p)
