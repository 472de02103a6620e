"""Adapter-only safetensors files and parameter counting.

An adapter file holds one adapter's tensors (``<layer>.lora_A``, ``.lora_B``, ``.lora_magnitude``,
``.lora_A_start``, ``.lora_B_start``, ``.lora_scaling``; no adapter name in the keys, as in PEFT), the
tensors of ``modules_to_save`` and, in its metadata, the ``AdapterConfig`` as JSON. Files are read with
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
from .inject import (
    _require_module,
    _saved_module_names,
    active_adapter,
    adapter_configs,
    adapter_layers,
    apply_adapters,
    model_transaction,
    numel,
)
from .layers import LEGACY_NAMES, AdapterLayer

FORMAT = "liera_vision.adapter"
FORMAT_VERSION = "2"  # 1: liera-vision 0.1.0 (dora_magnitude / pissa_A0 / pissa_B0, no lora_scaling)


def _adapter_name(model: nn.Module, adapter_name: str | None, what: str) -> str:
    _require_module(model, what)
    configs = adapter_configs(model)
    if not configs:
        raise ValueError(f"{type(model).__name__} has no adapters; call apply_adapters first")
    if adapter_name is None:
        adapter_name = active_adapter(model) or next(iter(configs))
    if adapter_name not in configs:
        raise ValueError(f"{type(model).__name__} has no adapter {adapter_name!r}; it has {list(configs)}")
    return adapter_name


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one adapter (default: the active one) plus the full state of its ``modules_to_save``.

    Keys carry no adapter name: ``<layer>.lora_A``, ``.lora_B``, ``.lora_magnitude``, ``.lora_A_start``,
    ``.lora_B_start``, ``.lora_scaling`` and ``<module>.<key>`` for ``modules_to_save``.
    """
    adapter_name = _adapter_name(model, adapter_name, "adapter_state_dict")
    config = adapter_configs(model)[adapter_name]
    state = {}
    for name, layer in adapter_layers(model).items():
        if adapter_name in layer.settings:
            for attr, tensor in layer.adapter_tensors(adapter_name).items():
                state[f"{name}.{attr}"] = tensor
    for name in _saved_module_names(model, config.modules_to_save):
        for key, tensor in model.get_submodule(name).state_dict(keep_vars=True).items():
            state[f"{name}.{key}"] = tensor
    return state


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write one adapter of ``model`` (default: the active one) to a safetensors file, atomically.

    The metadata holds the ``AdapterConfig`` (JSON) and the format version; each layer's resolved
    ``alpha / rank`` is saved as ``<layer>.lora_scaling``, so loading reproduces the model exactly.
    """
    adapter_name = _adapter_name(model, adapter_name, "save_adapter")
    return write_adapter_file(path, adapter_configs(model)[adapter_name], adapter_state_dict(model, adapter_name),
                              adapter_name)


def write_adapter_file(path: str | os.PathLike, config: AdapterConfig, tensors: dict[str, torch.Tensor],
                       adapter_name: str = "default") -> Path:
    """Write ``tensors`` (keys as :func:`adapter_state_dict` gives them) and ``config`` as an adapter file."""
    from safetensors.torch import save_file

    path = _path(path, "adapter file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the adapter file's path (e.g. {path / 'adapter.safetensors'})")
    # clones: tied modules_to_save tensors share memory, which safetensors refuses to write
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "adapter_config": config.to_json(),
                "adapter_name": adapter_name}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_adapter_file(path: str | os.PathLike) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Config and tensors of an adapter file (0.1.0 files: names mapped to today's).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors adapter file, or invalid config metadata (naming the file).
    """
    from safetensors import SafetensorError, safe_open

    path = _path(path, "adapter file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a liera-vision adapter file (a PEFT adapter folder converts with "
                         "tools/convert_adapter.py or loads through liera_vision.peft)")
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
    version = metadata.get("format_version")
    if version not in ("1", FORMAT_VERSION):
        raise ValueError(f"{path}: adapter file format version {version!r}; this liera-vision reads 1 and "
                         f"{FORMAT_VERSION} (upgrade liera-vision)")
    try:
        config = AdapterConfig.from_json(metadata["adapter_config"])
    except ValueError as err:
        raise ValueError(f"{path}: invalid 'adapter_config' metadata: {err}") from err
    if version == "1":  # names of 0.1.0, and its scale (config only; alpha=None meant alpha = rank)
        tensors = {_legacy_key(k): v for k, v in tensors.items()}
        for key in [k for k in tensors if k.endswith(".lora_A")]:
            tensors[key.removesuffix("lora_A") + "lora_scaling"] = torch.tensor(config.alpha / config.rank,
                                                                                dtype=tensors[key].dtype)
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: tensor '{key}' has dtype {tensor.dtype}; adapter files hold floating-point "
                             "tensors")
    check_adapter_tensors(tensors, path)
    return config, tensors


ADAPTER_TENSORS = frozenset(AdapterLayer.tensor_names)  # lora_A, lora_B, lora_magnitude, lora_*_start, lora_scaling


def _leaf(key: str) -> str:
    """The adapter tensor name in a saved key (``….lora_A``) or a loaded one (``….lora_A.<adapter>``)."""
    parts = key.split(".")
    if parts[-1] in ADAPTER_TENSORS:
        return parts[-1]
    return parts[-2] if len(parts) > 1 and parts[-2] in ADAPTER_TENSORS else ""


def check_adapter_tensors(tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raise if ``tensors`` (a LieRA adapter state dict) could not come from a healthy adapter. One rule for
    liera-vision adapter files (:func:`read_adapter_file`) and what PEFT loads through ``liera_vision.peft``.

    LieRA's tensors (``lora_A``, ``lora_B``, ``lora_magnitude``, ``lora_A_start``, ``lora_B_start``,
    ``lora_scaling``) must be floating point and finite, ``lora_scaling`` one positive number; other
    floating-point tensors (``modules_to_save``) must be finite.

    Raises:
        ValueError: naming ``source`` and the tensor at fault.
    """
    for key, tensor in tensors.items():
        leaf = _leaf(key)
        if not tensor.is_floating_point():
            if leaf:
                raise ValueError(f"{source}: tensor '{key}' has dtype {tensor.dtype}; LieRA adapter tensors are "
                                 "floating point")
            continue  # e.g. a BatchNorm's num_batches_tracked among modules_to_save
        if tensor.device.type == "meta":
            continue
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: tensor '{key}' holds NaN / inf values (a diverged or corrupted adapter)")
        if leaf == "lora_scaling":
            if tensor.numel() != 1:
                raise ValueError(f"{source}: '{key}' (alpha / rank) must hold one number, got shape "
                                 f"{tuple(tensor.shape)}")
            if not float(tensor) > 0:
                raise ValueError(f"{source}: '{key}' (alpha / rank) must be positive, got {float(tensor)}")


def _path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"the {what} path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _legacy_key(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    return f"{module}.{LEGACY_NAMES[leaf]}" if leaf in LEGACY_NAMES else key


@dataclass
class LoadResult:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def load_adapter(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 adapter_name: str = "default") -> LoadResult:
    """Load an adapter file into ``model`` as ``adapter_name``.

    A model without that adapter gets it applied first with the file's config; one that has it
    must have been adapted with the same config. Shapes are checked per key before anything is
    copied; with ``strict`` missing or unexpected keys raise. On any error the model is exactly as
    it was (modules, parameters, ``requires_grad``, training flags, adapters).

    Raises:
        ValueError: naming the file and the keys / fields / shapes at fault.
    """
    _require_module(model, "load_adapter")
    config, tensors = read_adapter_file(path)
    with model_transaction(model):
        current = adapter_configs(model).get(adapter_name)
        if current is None:
            apply_adapters(model, config, adapter_name)
        elif current.to_dict() != config.to_dict():
            old, new = current.to_dict(), config.to_dict()
            diff = {k: (v, new[k]) for k, v in old.items() if new[k] != v}
            raise ValueError(f"{path}: adapter config differs from the model's adapter {adapter_name!r} "
                             f"(field: (model, file)): {diff}")
        if any(adapter_name in layer.merged_adapters for layer in adapter_layers(model).values()):
            raise ValueError(f"cannot load {path} into a merged model; call unmerge_adapters(model) first")
        expected = adapter_state_dict(model, adapter_name)
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
    """Trainable / total parameters per module; a parameter shared by several modules (tied weights) counts once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"count_parameters expects a torch nn.Module, got {type(model).__name__}")
    per_layer, seen = [], set()
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            per_layer.append((name or "<root>", sum(numel(p) for p in params if p.requires_grad),
                              sum(numel(p) for p in params)))
    return ParameterCount(trainable=sum(t for _, t, _ in per_layer), total=sum(n for _, _, n in per_layer),
                          per_layer=per_layer)
