"""The scale ``alpha / rank`` of each adapted layer: a number, or derived from the weights a Lie update multiplies.

With Adam every step moves the factors by about ``lr``, so LoRA moves W by ~ ``lr·alpha/r`` and a
Lie update by ~ ``lr·alpha/r · |W|``: a Lie step is *relative* to W. Matching LoRA's step therefore
means ``alpha / r = 1 / mean|W|`` of the weights being adapted (docs/benchmarks.md, "LieRA's scale",
measures it). The rules differ only in what the mean is taken over:

============  =====================================================
rule          mean|W| over
============  =====================================================
``auto``      every adapted weight entry of the adapter (one number)
``auto-kind`` the layers of one kind (same type and kernel geometry)
``auto-layer`` each layer on its own
============  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SCALE_RULES: dict[str, Callable[[str, str], str]] = {  # rule -> group key of a layer (name, kind)
    "auto": lambda name, kind: "all adapted layers",
    "auto-kind": lambda name, kind: kind,
    "auto-layer": lambda name, kind: name,
}


@dataclass(frozen=True)
class ScaleInput:
    weight: torch.Tensor
    kind: str
    alpha: float | str
    rank: int


def resolve_scalings(layers: dict[str, ScaleInput]) -> dict[str, float]:
    """``alpha / rank`` per layer name; weight-derived rules use ``1 / mean|W|`` of their group.

    Raises:
        ValueError: a weight-derived group whose weights are all zero (naming its layers).
    """
    sums: dict[tuple[str, str], list[float]] = {}
    for name, item in layers.items():
        if isinstance(item.alpha, str):
            key = (item.alpha, SCALE_RULES[item.alpha](name, item.kind))
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(item.weight.detach().abs().sum(dtype=torch.float64))
            acc[1] += item.weight.numel()
    out = {}
    for name, item in layers.items():
        if not isinstance(item.alpha, str):
            out[name] = float(item.alpha) / item.rank
            continue
        total, count = sums[(item.alpha, SCALE_RULES[item.alpha](name, item.kind))]
        if total == 0.0:
            group = [n for n, i in layers.items() if i.alpha == item.alpha
                     and SCALE_RULES[item.alpha](n, i.kind) == SCALE_RULES[item.alpha](name, item.kind)]
            raise ValueError(f"alpha={item.alpha!r} derives alpha/rank = 1/mean|W|, but the weights of {group} are all "
                             "zero; give these layers a numeric alpha (alpha_pattern) or load their weights first")
        out[name] = count / total
    return out
