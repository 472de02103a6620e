"""Adapter-only safetensors files and parameter counting.

An adapter file holds the adapter tensors (``<layer>.lora_A`` …), the tensors of
``modules_to_save`` and, in its metadata, the ``AdapterConfig`` as JSON. Files are read with
safetensors only: no pickle, so a file from someone else cannot run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..fileio import atomic_write
from .config import AdapterConfig
from .inject import _saved_module_names, adapter_layers, apply_adapters, get_adapter_config

FORMAT = "liera_vision.adapter"
FORMAT_VERSION = "1"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters and buffers plus the full state of ``modules_to_save``."""
    config = get_adapter_config(model)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no adapters; call apply_adapters first")
    state = {}
    for name, layer in adapter_layers(model).items():
        for key, tensor in layer.state_dict(keep_vars=False).items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = tensor
    for name in _saved_module_names(model, config.modules_to_save):
        for key, tensor in model.get_submodule(name).state_dict().items():
            state[f"{name}.{key}"] = tensor
    return state


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter of ``model`` to a safetensors file (atomically) and return its path."""
    from safetensors.torch import save_file

    path = Path(path)
    config = get_adapter_config(model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "adapter_config": config.to_json()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_adapter_file(path: str | os.PathLike) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Config and tensors of an adapter file; ``ValueError`` naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err}); adapters load from safetensors only "
                         "(pickled .pt/.bin files are refused because loading them can run code)") from err
    if metadata.get("format") != FORMAT or "adapter_config" not in metadata:
        raise ValueError(f"{path}: safetensors file without liera_vision adapter metadata "
                         f"(expected metadata format={FORMAT!r} and an 'adapter_config' entry)")
    try:
        config = AdapterConfig.from_json(metadata["adapter_config"])
    except ValueError as err:
        raise ValueError(f"{path}: invalid 'adapter_config' metadata: {err}") from err
    return config, tensors


@dataclass
class LoadResult:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def load_adapter(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load an adapter file into ``model``.

    A plain model gets adapters applied first with the file's config; a model that already has
    adapters must have been adapted with the same config. Shapes are checked per key; with
    ``strict`` missing or unexpected keys raise ``ValueError`` naming them.
    """
    config, tensors = read_adapter_file(path)
    current = get_adapter_config(model)
    if current is None:
        apply_adapters(model, config)
    elif current.to_dict() != config.to_dict():
        diff = {k: (v, config.to_dict()[k]) for k, v in current.to_dict().items() if config.to_dict()[k] != v}
        raise ValueError(f"{path}: adapter config differs from the model's (field: (model, file)): {diff}")
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise ValueError(f"cannot load {path} into a merged model; call unmerge_adapters(model) first")
    expected = adapter_state_dict(model)
    result = LoadResult(missing_keys=sorted(set(expected) - set(tensors)),
                        unexpected_keys=sorted(set(tensors) - set(expected)))
    for key in sorted(set(expected) & set(tensors)):
        if expected[key].shape != tensors[key].shape:
            raise ValueError(f"{path}: tensor '{key}' has shape {tuple(tensors[key].shape)}, "
                             f"the model expects {tuple(expected[key].shape)}")
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(f"{path}: missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    with torch.no_grad():
        for key in sorted(set(expected) & set(tensors)):
            expected[key].copy_(tensors[key])
    return result


@dataclass
class ParameterCount:
    """Trainable / total parameters and a per-module table (``str()`` prints it)."""

    trainable: int
    total: int
    per_layer: list[tuple[str, int, int]]

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        rows = [f"{'module':<48} {'trainable':>12} {'total':>12}"]
        rows += [f"{name:<48} {t:>12,} {n:>12,}" for name, t, n in self.per_layer if t]
        rows.append(f"{'TOTAL':<48} {self.trainable:>12,} {self.total:>12,}  ({100 * self.fraction:.3f}% trainable)")
        return "\n".join(rows)


def count_parameters(model: nn.Module) -> ParameterCount:
    per_layer = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if params:
            per_layer.append((name or "<root>", sum(p.numel() for p in params if p.requires_grad),
                              sum(p.numel() for p in params)))
    return ParameterCount(trainable=sum(t for _, t, _ in per_layer), total=sum(n for _, _, n in per_layer),
                          per_layer=per_layer)
