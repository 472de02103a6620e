"""The layers an adapter can wrap, their weights in one canonical layout, and when wrapping would be wrong.

Supported: ``nn.Linear``, ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` (any stride, padding, padding
mode, dilation, groups; subclasses with their own ``forward`` such as timm's ``Conv2dSame``) and
Hugging Face ``transformers``' GPT-2-style ``Conv1D`` (a linear layer storing its weight as
``(in, out)``; recognised by class name so that transformers is not imported). The canonical layout
puts output channels first — ``(out, in/groups, *kernel)`` — which is what the factorizations,
DoRA's per-output-channel norm and PiSSA's SVD use; ``Conv1D`` weights are transposed into it.

Wrapping replaces the module object at its attribute path(s). That is right only when the model
uses the weight through that module, so :func:`cannot_adapt` refuses layers where the adapter could
not be correct (forward, gradients, merge and ``merge_and_unload`` agreeing):

* the weight is not a stored parameter (``weight_norm``, ``spectral_norm``, ``parametrize``
  recompute it, so the adapted weight would be overwritten and could not be merged);
* the weight Parameter is shared with another module (tied weights: merging would change both);
* lazy (uninitialised), meta-device or non-floating-point (quantized) weights.

Parents that read a child's tensors instead of calling it (``nn.MultiheadAttention`` reads
``out_proj.weight``, ``nn.TransformerEncoderLayer``'s fast path reads ``linear1.weight``, timm's
BEiT / EVA attention calls ``F.linear(x, self.qkv.weight, …)``) are handled by the wrapper: its
``weight`` is the adapted weight. A module reachable under several paths is wrapped once and
installed at every path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_PLAIN_FORWARDS = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass(frozen=True)
class BaseKind:
    name: str
    spatial_dims: int   # 0 for linear layers
    transposed: bool    # weight stored as (in, out)


def base_kind(module: nn.Module) -> BaseKind | None:
    """What kind of supported layer ``module`` is, or ``None``."""
    if isinstance(module, nn.Linear):
        return BaseKind("Linear", 0, False)
    for dims, cls in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        if isinstance(module, cls):
            return BaseKind(f"Conv{dims}d", dims, False)
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return BaseKind("Conv1D", 0, True)
    return None


SUPPORTED = "nn.Linear, nn.Conv1d/2d/3d and transformers' Conv1D"


def groups_of(module: nn.Module) -> int:
    return getattr(module, "groups", 1) if base_kind(module).spatial_dims else 1


def to_canonical(kind: BaseKind, weight: torch.Tensor) -> torch.Tensor:
    return weight.t() if kind.transposed else weight


def from_canonical(kind: BaseKind, weight: torch.Tensor) -> torch.Tensor:
    return weight.t() if kind.transposed else weight


def label(module: nn.Module) -> str:
    """Geometry label, e.g. ``Conv2d 7x7/s1 dw``, ``Conv2d 4x4/s4``, ``Linear``; layers of one label share a kind."""
    kind = base_kind(module)
    if not kind.spatial_dims:
        return kind.name
    stride = module.stride[0] if len(set(module.stride)) == 1 else "x".join(map(str, module.stride))
    groups = module.groups
    tag = "" if groups == 1 else (" dw" if groups == module.in_channels else f" g{groups}")
    return f"{kind.name} {'x'.join(map(str, module.kernel_size))}/s{stride}{tag}"


def is_spatial(module: nn.Module) -> bool:
    """A convolution whose kernel covers more than one position (the paper's targets)."""
    kind = base_kind(module)
    return bool(kind and kind.spatial_dims and math.prod(module.kernel_size) > 1)


def cannot_adapt(module: nn.Module, owners: dict[int, list[str]], paths: list[str]) -> str | None:
    """Why an adapter on ``module`` (reached at ``paths``) could not be correct, or ``None`` when it can.

    ``owners`` maps ``id(parameter)`` to every qualified parameter name using it (see
    :func:`parameter_owners`).
    """
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    if weight is None:
        how = "parametrize" if hasattr(module, "parametrizations") else "weight_norm / spectral_norm or similar"
        return (f"its weight is not a stored parameter (computed by {how}): an adapter would be overwritten and "
                "could not be merged")
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return "it is a lazy module whose weight is not initialised yet (run one forward pass first)"
    if weight.is_meta:
        return "its weight is on the meta device (no data to adapt; materialise the model first)"
    if not weight.is_floating_point():
        return f"its weight has dtype {weight.dtype}, not floating point (quantized layers are not supported)"
    users = [n for n in owners.get(id(weight), []) if not any(n.startswith(f"{p}.") for p in paths)]
    if users:
        return f"its weight is shared with {users} (tied weights): merging would change those too"
    return None


def parameter_owners(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` → all qualified names it has in ``model`` (tied parameters have several)."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in owners.setdefault(id(param), []):
            owners[id(param)].append(name)
    return owners


def module_paths(model: nn.Module) -> dict[int, list[str]]:
    """``id(module)`` → every path under which ``model`` reaches it (shared modules have several)."""
    paths: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            paths.setdefault(id(module), []).append(name)
    return paths


def runs_plain_forward(module: nn.Module) -> bool:
    """True when calling the module is exactly ``F.linear`` / ``F.convNd``: the library's own forward, zero
    padding, no hooks, no forward replaced on the instance. Anything else runs the module's own ``__call__``."""
    if "forward" in vars(module) or has_hooks(module):
        return False
    if base_kind(module).transposed:
        return True
    return getattr(module, "padding_mode", "zeros") == "zeros" and type(module).forward in _PLAIN_FORWARDS


def has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on ``module`` itself. torch has no public query: this reads the
    ``_forward_hooks`` … dicts, pinned by ``tests/core/test_torch_internals.py``."""
    return any(getattr(module, hooks) for hooks in _HOOKS)


def forward_with(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its weight replaced by ``weight`` (stored layout), gradients flowing into ``weight``."""
    kind = base_kind(module)
    if runs_plain_forward(module):
        if kind.transposed:  # transformers Conv1D: x @ W + b == F.linear(x, W.T, b)
            return F.linear(x, weight.t(), module.bias)
        if not kind.spatial_dims:
            return F.linear(x, weight, module.bias)
        return _CONV_FN[kind.spatial_dims](x, weight, module.bias, module.stride, module.padding, module.dilation,
                                           module.groups)
    # subclasses with their own forward (timm's Conv2dSame, StdConv2d …), hooks, padding modes: the module's own call
    return torch.func.functional_call(module, {"weight": weight}, (x,))
