"""Conversion between liera-vision adapter files and PEFT adapter folders (both directions, lossless).

=========================  =====================================  ==============================================
                           liera-vision file                      PEFT folder
=========================  =====================================  ==============================================
written by                 :func:`liera_vision.core.save_adapter`   ``PeftModel.save_pretrained``
config                     ``AdapterConfig`` JSON in the           ``adapter_config.json`` (``LieRAConfig``,
                           safetensors metadata                    ``peft_type: "LIERA"``)
adapter tensors            ``<layer>.lora_A`` …                    ``base_model.model.<layer>.lora_A`` …
modules_to_save            ``<module>.<key>``                      ``base_model.model.<module>.<key>``
=========================  =====================================  ==============================================

The tensors themselves (``lora_A``, ``lora_B``, ``lora_magnitude``, ``lora_A_start``, ``lora_B_start``,
``lora_scaling``) are the same; only the key prefix and the config's form differ. Layer selection
travels as the explicit list of adapted layers (a core preset such as ``"spatial"`` becomes that
list), so the adapter lands on exactly the same layers. Files are read with safetensors only
(never pickle) and written atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..core import AdapterLayer, name_matches, read_adapter_file
from ..core.inject import pattern_value
from ..core.io import write_adapter_file
from ..fileio import atomic_write, write_text_atomic
from .check import check_adapter_tensors
from .config import PEFT_TYPE, LieRAConfig, exact_pattern

PEFT_PREFIX = "base_model.model."  # PeftModel's prefix of every adapter key
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEAVES = frozenset(AdapterLayer.tensor_names)


def _layers(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({key.rpartition(".")[0] for key in tensors if key.rpartition(".")[2] in LEAVES})


def _saved_modules(keys: list[str], patterns: list[str], source: Path) -> list[str]:
    """The modules (outermost names matching ``patterns``, core's rule) that the non-adapter ``keys`` belong to."""
    modules: list[str] = []
    for key in keys:
        parts = key.split(".")
        module = next((".".join(parts[:i]) for i in range(1, len(parts))
                       if any(name_matches(p, ".".join(parts[:i])) for p in patterns)), None)
        if module is None:
            raise ValueError(f"{source}: tensor '{key}' belongs to no adapted layer and to no module of "
                             f"modules_to_save={patterns}")
        if module not in modules:
            modules.append(module)
    return modules


def liera_to_peft(source: str | os.PathLike, folder: str | os.PathLike, *,
                  base_model_name_or_path: str | None = None) -> Path:
    """Write the liera-vision adapter file ``source`` as a PEFT adapter folder (``adapter_config.json`` and
    ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained`` after ``import liera_vision.peft``.

    liera-vision 0.1.0 files (no per-layer ``lora_scaling``) get it from their numeric alpha.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is not an adapter file, or ``folder`` is a file (naming the path).
    """
    source, folder = Path(source), Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; liera_to_peft writes a PEFT adapter folder")
    config, tensors = read_adapter_file(source)
    layers = _layers(tensors)
    if not layers:
        raise ValueError(f"{source}: no adapter tensors (keys ending in {sorted(LEAVES)})")
    for layer in layers:  # 0.1.0 kept alpha / rank in the config only
        if f"{layer}.lora_scaling" not in tensors:
            rank = pattern_value(config.rank_pattern, layer) or config.rank
            alpha = pattern_value(config.alpha_pattern, layer) or config.alpha
            if isinstance(alpha, str):
                raise ValueError(f"{source}: layer '{layer}' has no lora_scaling tensor and alpha={alpha!r} derives "
                                 "it from weights the file does not hold")
            tensors[f"{layer}.lora_scaling"] = torch.tensor(float(alpha) / rank, dtype=tensors[f"{layer}.lora_A"].dtype)
    saved = _saved_modules([k for k in tensors if k.rpartition(".")[0] not in layers], config.modules_to_save, source)
    peft_config = LieRAConfig.from_adapter_config(config, target_modules=exact_pattern(layers),
                                                  modules_to_save=saved or None, inference_mode=True,
                                                  base_model_name_or_path=base_model_name_or_path)
    from safetensors.torch import save_file

    weights = {PEFT_PREFIX + key: value.contiguous() for key, value in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(peft_config.to_dict(), indent=2, sort_keys=True, default=list))
    return folder


def peft_to_liera(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the PEFT LieRA adapter folder ``folder`` (``PeftModel.save_pretrained``; a non-default adapter lives
    in ``folder/<adapter name>``) as a liera-vision adapter file, loadable with
    :func:`liera_vision.core.load_adapter`.

    Raises:
        FileNotFoundError: no ``adapter_config.json`` / ``adapter_model.safetensors`` in ``folder``.
        ValueError: not a LieRA adapter, a pickled ``adapter_model.bin`` (refused: loading it can run code),
            an invalid config (naming the file and field), or a corrupted tensor (NaN / inf, ``lora_scaling`` not
            positive; naming the file and tensor).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder, path = Path(folder), Path(path)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (expected a folder written by PeftModel.save_pretrained)")
    if not weights_path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise ValueError(f"{folder}: only a pickled adapter_model.bin, which is refused because loading it can run "
                             "code; save the adapter with safe_serialization=True (PEFT's default)")
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("peft_type") != PEFT_TYPE:
        found = data.get("peft_type") if isinstance(data, dict) else None
        raise ValueError(f"{config_path}: peft_type {found!r}; only LieRA adapters (peft_type {PEFT_TYPE!r}) convert "
                         "to liera-vision adapter files")
    try:
        config = LieRAConfig.from_peft_type(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: invalid LieRA config: {err}") from None
    try:
        stored = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path}: not a safetensors file ({err})") from None
    check_adapter_tensors(stored, weights_path)  # core's rule, as core.load_adapter would apply it to the result
    tensors = {key.removeprefix(PEFT_PREFIX): value for key, value in stored.items()}
    layers = _layers(tensors)
    if not layers:
        raise ValueError(f"{weights_path}: no LieRA adapter tensors (keys ending in {sorted(LEAVES)})")
    core = config.to_adapter_config(targets=[re.escape(layer) for layer in layers],
                                    modules_to_save=[re.escape(m) for m in config.modules_to_save or []])
    return write_adapter_file(path, core, tensors)


def convert_adapter(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Convert in the direction ``source`` implies: a PEFT folder → a liera-vision file, a file → a PEFT folder.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: as :func:`peft_to_liera` / :func:`liera_to_peft`.
    """
    source = Path(source)
    if source.is_dir():
        return peft_to_liera(source, target)
    if source.is_file():
        return liera_to_peft(source, target)
    raise FileNotFoundError(f"{source} does not exist (expected a liera-vision adapter file or a PEFT adapter folder)")


def main(argv: list[str] | None = None) -> int:
    """``tools/convert_adapter.py``: convert one adapter; a user error exits with status 1 and one line on stderr."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="convert_adapter.py",
        description="Convert a LieRA adapter between liera-vision's file and PEFT's folder layout (both ways).",
        epilog="  convert_adapter.py liera-r8.safetensors liera-r8-peft/   # file -> PEFT folder\n"
               "  convert_adapter.py liera-r8-peft/ liera-r8.safetensors   # PEFT folder -> file\n"
               "A PEFT folder loads with PeftModel.from_pretrained after `import liera_vision.peft`; a file with\n"
               "liera_vision.core.load_adapter. See docs/peft.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a liera-vision adapter file or a PEFT adapter folder")
    parser.add_argument("target", type=Path, help="the PEFT folder / liera-vision file to write")
    parser.add_argument("--base-model", default=None,
                        help="file -> folder only: base_model_name_or_path to record in adapter_config.json")
    args = parser.parse_args(argv)
    try:
        if args.base_model is not None and args.source.is_file():
            written = liera_to_peft(args.source, args.target, base_model_name_or_path=args.base_model)
        else:
            written = convert_adapter(args.source, args.target)
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0
