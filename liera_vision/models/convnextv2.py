"""ConvNeXt-V2 over timm: a registry of sizes, construction, and checkpoint loading.

Checkpoints load from

* a timm pretrained tag (``pretrained="fcmae_ft_in22k_in1k"``; needs the Hugging Face hub);
* a local timm-format file (``stem.0.weight``, ``stages.0.blocks.0.conv_dw.weight`` …);
* an official ConvNeXt-V2 checkpoint (weights under ``model``; ``downsample_layers.*``,
  ``stages.i.j.dwconv``, ``pwconv1/2``, ``grn.gamma/beta`` stored as ``(1, 1, 1, C)`` by
  ``models/convnextv2.py`` of facebookresearch/ConvNeXt-V2, or ``(1, C)`` as in the released
  FCMAE pre-training files);
* an FCMAE pre-training checkpoint: the official names, optionally under ``encoder.`` in the
  sparse layout of ``models/convnextv2_sparse.py`` (MinkowskiEngine ``kernel`` tensors,
  ``ln`` / ``linear`` wrappers), with the pre-training parts (``decoder``, ``mask_token``,
  ``proj``, ``pred``; ``models/fcmae.py``) present or not.

The official → timm renaming and reshaping is timm's own ``checkpoint_filter_fn``
(``timm/models/convnext.py``). This module adds only what timm lacks: the pre-training keys are
dropped (and reported, as ``main_finetune.py`` of ConvNeXt-V2 drops them), and the sparse
``encoder.`` layout is made dense (``remap_checkpoint_keys`` in ConvNeXt-V2's ``utils.py``).

Files are read with safetensors or ``torch.load(weights_only=True)``: a pickle that would run
code is refused unless ``allow_pickle=True`` says the file is trusted.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from liera_vision.errors import CheckpointWarning

# arch -> (depths, dims): convnextv2_atto … convnextv2_huge of models/convnextv2.py in facebookresearch/ConvNeXt-V2
# (timm's convnextv2_* use the same)
ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

# the FCMAE model's own parts besides its encoder (models/fcmae.py): never part of a ConvNeXt-V2
PRETRAINING_KEY = re.compile(r"^(decoder|mask_token|proj|pred)(\.|$)")


def arch_name(arch: str) -> str:
    """``"atto"`` or ``"convnextv2_atto"`` → ``"atto"``; ``ValueError`` listing the sizes otherwise."""
    short = arch.removeprefix("convnextv2_").split(".")[0]
    if short not in ARCHS:
        raise ValueError(f"unknown ConvNeXt-V2 arch {arch!r}; expected one of {list(ARCHS)}")
    return short


def build_convnextv2(arch: str = "atto", num_classes: int = 1000, *, pretrained: str | None = None,
                     checkpoint: str | os.PathLike | None = None, allow_pickle: bool = False,
                     **timm_kwargs) -> tuple[nn.Module, CheckpointReport | None]:
    """A timm ConvNeXt-V2 and what loading ``checkpoint`` did (``None`` without a checkpoint).

    Random-initialised unless ``pretrained`` (a timm tag) or ``checkpoint`` (a local file, see
    :func:`load_checkpoint`) is given; ``timm_kwargs`` go to ``timm.create_model``
    (``drop_path_rate``, ``img_size`` …). Errors: ``ValueError`` for an unknown arch or tag or a
    checkpoint that does not fit, ``RuntimeError`` when the hub cannot be reached.
    """
    import timm

    short = arch_name(arch)
    if pretrained and checkpoint:
        raise ValueError("give either pretrained (a timm tag) or checkpoint (a local file), not both")
    name = f"convnextv2_{short}" + (f".{pretrained}" if pretrained else "")
    if pretrained:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"convnextv2_{short}.*")]
        if pretrained not in tags:
            raise ValueError(f"unknown timm pretrained tag {pretrained!r} for convnextv2_{short}; "
                             f"expected one of {tags}")
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes, **timm_kwargs)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(f"could not fetch the timm weights {name!r} from the Hugging Face hub "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Offline, download the file "
                           "elsewhere and pass checkpoint=PATH (official, FCMAE or timm format).") from err
    report = load_checkpoint(model, checkpoint, allow_pickle=allow_pickle) if checkpoint is not None else None
    return model, report


def create_convnextv2(arch: str = "atto", num_classes: int = 1000, *, pretrained: str | None = None,
                      checkpoint: str | os.PathLike | None = None, allow_pickle: bool = False,
                      **timm_kwargs) -> nn.Module:
    """:func:`build_convnextv2` without the report: just the model."""
    return build_convnextv2(arch, num_classes, pretrained=pretrained, checkpoint=checkpoint,
                            allow_pickle=allow_pickle, **timm_kwargs)[0]


# --- reading ----------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file read with ``weights_only=True``).

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming the file when it cannot be read
    safely or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise ValueError(f"{path}: cannot read as safetensors ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        hint = "" if allow_pickle else (" If you trust this file, pass allow_pickle=True "
                                        "(loading it can run arbitrary code).")
        raise ValueError(f"{path}: cannot read the checkpoint with torch.load(weights_only=True): "
                         f"{str(err).splitlines()[0]}.{hint}") from err
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside common containers (``model``, ``state_dict``, ``model_ema``; in that order)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return unwrap_state_dict(obj[key], source)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:8]}"
    raise ValueError(f"{source}: expected a state dict (optionally under 'model' / 'state_dict'), found {kind}")


def select_prefix(state: dict[str, torch.Tensor], prefix: str, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, prefix removed; ``'backbone'`` and ``'backbone.'`` mean the same
    (as in mmengine's ``_load_checkpoint_with_prefix``). ``ValueError`` when no key starts with it."""
    if not prefix:
        return state
    prefix = prefix if prefix.endswith(".") else prefix + "."
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        heads = sorted({k.split(".", 1)[0] + "." for k in state})
        raise ValueError(f"{source}: prefix {prefix!r} matches no key; the checkpoint's keys start with "
                         f"{heads[:10]}{' …' if len(heads) > 10 else ''}")
    return picked


# --- conversion -------------------------------------------------------------------------------
def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    """``"fcmae"`` (pre-training parts or the ``encoder.`` layout), ``"official"``, ``"timm"`` or ``"unknown"``."""
    keys = list(state_dict)
    if any(k.startswith("encoder.") or PRETRAINING_KEY.match(k) for k in keys):
        return "fcmae"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return "timm"
    return "unknown"


def split_pretraining_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the encoder's tensors, the sorted FCMAE decoder / mask-token / projection / prediction keys)."""
    dropped = sorted(k for k in state_dict if PRETRAINING_KEY.match(k))
    return {k: v for k, v in state_dict.items() if not PRETRAINING_KEY.match(k)}, dropped


def fcmae_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sparse ``encoder.`` layout → dense official names (``remap_checkpoint_keys``, ConvNeXt-V2 ``utils.py``).

    ``encoder.`` is removed, MinkowskiEngine kernels ``(k*k, in, out)`` / depthwise ``(k*k, C)``
    become conv weights, ``ln`` / ``linear`` wrappers are unwrapped. Keys outside ``encoder.`` pass
    unchanged; 2-D biases and GRN parameters are left to timm's filter (it reshapes them).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("encoder."):
            out[key] = value
            continue
        key = key.removeprefix("encoder.")
        if key.endswith(".kernel"):  # MinkowskiEngine kernels: (k*k, in, out) or depthwise (k*k, dim)
            key = key.removesuffix(".kernel") + ".weight"
            ks = math.isqrt(value.shape[0])
            if value.dim() == 3:
                _, c_in, c_out = value.shape
                value = value.permute(2, 1, 0).reshape(c_out, c_in, ks, ks).transpose(3, 2)
            else:
                value = value.permute(1, 0).reshape(value.shape[1], 1, ks, ks).transpose(3, 2)
        else:
            parts = key.split(".")
            if len(parts) >= 2 and parts[-2] in ("ln", "linear"):
                key = ".".join(parts[:-2] + parts[-1:])
        out[key] = value.contiguous()
    return out


class _Shapes:
    """What timm's filter reads of a model (``model.state_dict()[k].shape``), computed once."""

    def __init__(self, model: nn.Module) -> None:
        self._state = model.state_dict()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class Conversion(NamedTuple):
    state: dict[str, torch.Tensor]  # timm names
    format: str
    unplaced: list[str]  # source keys timm's filter could not place in the model
    dropped: list[str]  # FCMAE pre-training keys and the heads timm's filter discards, dropped on purpose


def to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module, source: str = "checkpoint") -> Conversion:
    """Convert any supported layout to ``model``'s timm names.

    Official names go through timm's ``checkpoint_filter_fn`` one tensor at a time: it looks up
    the model's shape for 2-D tensors, so a tensor the model lacks lands in ``unplaced`` instead
    of crashing the filter. ``ValueError`` naming the key for a tensor whose size does not fit
    (wrong arch) and for two source tensors that map to one model tensor.
    """
    from timm.models.convnext import checkpoint_filter_fn

    fmt = detect_format(state_dict)
    if fmt not in ("fcmae", "official"):
        return Conversion(dict(state_dict), fmt, [], [])
    state, dropped = split_pretraining_keys(state_dict)
    state = fcmae_to_official(state)
    shapes = _Shapes(model)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unplaced = []
    for key, value in state.items():
        try:
            mapped = checkpoint_filter_fn({key: value}, shapes)
        except KeyError:  # a 2-D tensor whose timm name the model does not have
            unplaced.append(key)
            continue
        except RuntimeError as err:  # reshape to the model's shape failed: sizes differ
            name = next(iter(checkpoint_filter_fn({key: value.flatten()}, shapes)))  # 1-D: renamed, no lookup
            raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)} in the checkpoint but the model's "
                             f"'{name}' has {tuple(shapes.state_dict()[name].shape)} (wrong arch?)") from err
        if not mapped:
            dropped.append(key)  # heads timm's filter discards itself (e.g. EUPE projectors)
        for new, tensor in mapped.items():
            if new in out:
                raise ValueError(f"{source}: '{origin[new]}' and '{key}' both map to the model's '{new}'; "
                                 "the checkpoint mixes two layouts")
            out[new], origin[new] = tensor, key
    return Conversion(out, fmt, unplaced, sorted(dropped))


def timm_to_official(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ConvNeXt-V2 names and shapes for a timm model or state dict: the inverse of timm's filter.

    GRN parameters come out as ``(1, 1, 1, C)`` and the MLP weights as ``nn.Linear`` ``(out, in)``,
    as in ``models/convnextv2.py`` of ConvNeXt-V2. For writing official-layout files (tests, tools).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out = {}
    for key, value in state.items():
        k = key.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.([0-9]+)\.downsample\.([0-9]+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.([0-9]+)\.blocks\.([0-9]+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if "mlp.grn" in k:
            k = k.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            value = value.reshape(1, 1, 1, -1)
        k = k.replace("head.fc.", "head.").replace("head.norm.", "norm.")
        if "pwconv" in k and value.dim() == 4:  # conv_mlp (atto..nano) stores 1x1 convs; official uses Linear
            value = value.flatten(1)
        out[k] = value.detach().clone()
    return out


# --- loading ----------------------------------------------------------------------------------
def _listing(keys: list[str], limit: int = 10) -> str:
    return f"{', '.join(keys[:limit])}{' …' if len(keys) > limit else ''}"


def _grouped(keys: list[str]) -> str:
    """``decoder.* (12), mask_token, proj.* (2)``: every dropped key accounted for in one short line."""
    groups: dict[str, int] = {}
    for key in keys:
        head, dot, _ = key.partition(".")
        name = head + ".*" if dot else head
        groups[name] = groups.get(name, 0) + 1
    return ", ".join(f"{name} ({n})" if name.endswith("*") else name for name, n in groups.items())


@dataclass
class CheckpointReport:
    """What :func:`load_checkpoint` did; ``str(report)`` is a short log block (every kind listed once)."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)  # model keys (timm names) now holding checkpoint tensors
    missing_keys: list[str] = field(default_factory=list)  # model keys the checkpoint lacks (classifier only)
    unexpected_keys: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model
    skipped_head: list[str] = field(default_factory=list)  # classifier tensors not loaded (shape differs / no head)
    dropped: list[str] = field(default_factory=list)  # FCMAE pre-training tensors, dropped on purpose

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.format} checkpoint, {len(self.loaded)} tensors loaded"]
        if self.dropped:
            lines.append(f"  dropped pre-training tensors ({len(self.dropped)}): {_grouped(self.dropped)}")
        for label, keys in (("missing", self.missing_keys), ("unexpected (not loaded)", self.unexpected_keys),
                            ("classifier not loaded (the model's head differs)", self.skipped_head)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {_listing(keys)}")
        return "\n".join(lines)


def load_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | dict, *, allow_pickle: bool = False,
                    prefix: str = "", source: str | None = None) -> CheckpointReport:
    """Load a timm / official / FCMAE checkpoint into a timm ConvNeXt-V2, in place.

    ``prefix`` selects a submodule's keys (``'backbone'`` = ``'backbone.'``); ``source`` names a
    state dict in messages. The classifier (``head.fc.*``) is skipped and reported when its shape
    differs or the model has none (``num_classes=0``). Dropped FCMAE pre-training tensors are
    listed in ``report.dropped``; checkpoint tensors that have no place in the model are listed in
    ``report.unexpected_keys`` and warned about (:class:`~liera_vision.errors.CheckpointWarning`).

    Raises ``ValueError`` naming the file and key for any other shape mismatch, a checkpoint that
    matches nothing, a prefix that matches nothing, or a missing backbone tensor (the model is
    unchanged then); ``FileNotFoundError`` for a missing file.
    """
    if isinstance(path_or_state, dict):
        source, state = source or "state dict", unwrap_state_dict(path_or_state, source or "state dict")
    else:
        source, state = source or str(path_or_state), read_state_dict(path_or_state, allow_pickle)
    state = select_prefix(state, prefix, source)
    conv = to_timm(state, model, source)
    if conv.format == "unknown":
        raise ValueError(f"{source}: unrecognised checkpoint layout (expected timm, official ConvNeXt-V2 or FCMAE "
                         f"keys); first keys: {list(state)[:6]}")
    own = model.state_dict()
    report = CheckpointReport(source=source, format=conv.format, unexpected_keys=list(conv.unplaced),
                              dropped=conv.dropped)
    to_load = {}
    for key, value in conv.state.items():
        if key.startswith("head.fc.") and (key not in own or own[key].shape != value.shape):
            report.skipped_head.append(key)
        elif key not in own:
            report.unexpected_keys.append(key)
        elif own[key].shape != value.shape:
            raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(own[key].shape)} in the model (wrong arch?)")
        else:
            to_load[key] = value
    if not to_load:
        raise ValueError(f"{source}: no tensor matches the model ({conv.format} layout); "
                         f"first keys: {list(conv.state)[:6]}")
    report.loaded, report.skipped_head = sorted(to_load), sorted(report.skipped_head)
    report.missing_keys = sorted(set(own) - set(to_load))
    backbone_missing = [k for k in report.missing_keys if not k.startswith("head.")]
    if backbone_missing:
        raise ValueError(f"{source}: backbone tensors missing from the checkpoint: {_listing(backbone_missing, 8)} "
                         f"(wrong arch or a truncated file?)")
    model.load_state_dict(to_load, strict=False)
    if report.unexpected_keys:
        warnings.warn(f"{source}: {len(report.unexpected_keys)} checkpoint tensors have no place in "
                      f"{type(model).__name__} and were not loaded: {_listing(report.unexpected_keys)}",
                      CheckpointWarning, stacklevel=2)
    return report
