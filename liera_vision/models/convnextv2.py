"""ConvNeXt-V2 over timm: a registry of sizes, construction, and checkpoint loading / conversion.

Checkpoints load from

* a timm pretrained tag (``pretrained="fcmae_ft_in22k_in1k"``; needs the Hugging Face hub);
* a local timm-format file (``stem.0.weight``, ``stages.0.blocks.0.conv_dw.weight`` …);
* an official ConvNeXt-V2 checkpoint (weights under ``model``; ``downsample_layers.*``,
  ``stages.i.j.dwconv``, ``pwconv1/2``, ``grn.gamma/beta`` of shape ``(1, 1, 1, 4C)``);
* an FCMAE pre-training checkpoint (``encoder.`` prefix, MinkowskiEngine ``kernel`` tensors,
  ``ln`` / ``linear`` wrappers; decoder, mask-token, ``proj`` and ``pred`` keys dropped) —
  the conversion of the official ``remap_checkpoint_keys``.

Files are read with safetensors or ``torch.load(weights_only=True)``: a pickle that would run
code is refused unless ``allow_pickle=True`` says the file is trusted.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# arch -> (depths, dims); REFERENCE.md §3
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
# official checkpoint names (dl.fbaipublicfiles.com/convnext/convnextv2/...), for reference in docs / errors
OFFICIAL_FILES = {
    "fcmae": "convnextv2_{arch}_1k_224_fcmae.pt",
    "ft_in1k": "convnextv2_{arch}_1k_224_ema.pt",
    "ft_in22k_in1k": "convnextv2_{arch}_22k_224_ema.pt",
}


def arch_name(arch: str) -> str:
    """``"atto"`` or ``"convnextv2_atto"`` → ``"atto"``; ``ValueError`` listing the sizes otherwise."""
    short = arch.removeprefix("convnextv2_").split(".")[0]
    if short not in ARCHS:
        raise ValueError(f"unknown ConvNeXt-V2 arch {arch!r}; expected one of {list(ARCHS)}")
    return short


def create_convnextv2(arch: str = "atto", num_classes: int = 1000, *, pretrained: str | None = None,
                      checkpoint: str | os.PathLike | None = None, allow_pickle: bool = False,
                      **timm_kwargs) -> nn.Module:
    """A timm ConvNeXt-V2, random-initialised unless ``pretrained`` (a timm tag) or ``checkpoint`` is given.

    ``timm_kwargs`` go to ``timm.create_model`` (``drop_path_rate``, ``img_size`` …).
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
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint, allow_pickle=allow_pickle)
        model.checkpoint_report = report
    return model


# --- reading ----------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file read with ``weights_only=True``)."""
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
    """The tensor dict inside common containers (``model``, ``state_dict``, ``model_ema``)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return unwrap_state_dict(obj[key], source)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:8]}"
    raise ValueError(f"{source}: expected a state dict (optionally under 'model' / 'state_dict'), found {kind}")


# --- conversion -------------------------------------------------------------------------------
FCMAE_DROP = re.compile(r"(^|\.)(decoder|mask_token|proj|pred)")


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.startswith("encoder.") for k in keys):
        return "fcmae"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return "timm"
    return "unknown"


def fcmae_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official ``remap_checkpoint_keys``: FCMAE (sparse) encoder → dense ConvNeXt-V2 names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("encoder.") or FCMAE_DROP.search(key.removeprefix("encoder.")):
            continue  # decoder, mask token, projection and prediction heads
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
    for key, value in out.items():
        if key.endswith("bias") and value.dim() != 1 and "grn" not in key:
            out[key] = value.reshape(-1)
        elif "grn" in key:
            out[key] = value.reshape(1, 1, 1, -1)
    return out


def to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module,
            source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Convert any supported layout to timm names.

    Returns the converted dict, the detected format and the source keys that have no
    counterpart in ``model`` and could not be converted.
    """
    from timm.models.convnext import checkpoint_filter_fn

    fmt = detect_format(state_dict)
    if fmt == "fcmae":
        state_dict = fcmae_to_official(state_dict)
    if fmt in ("fcmae", "official"):
        # timm's converter looks up the model's shape for 2-D pointwise weights: keys the model
        # lacks (wrong arch) would crash it, so they are set aside and reported as unexpected
        model_keys = model.state_dict()
        orphans = [k for k, v in state_dict.items() if _needs_model_key(k, v, model_keys, source)]
        safe = {k: v for k, v in state_dict.items() if k not in orphans}
        return checkpoint_filter_fn(safe, model), fmt, orphans
    return dict(state_dict), fmt, []


def _needs_model_key(key: str, value: torch.Tensor, model_keys, source: str) -> bool:
    """True for 2-D official tensors whose timm counterpart does not exist (would crash timm's filter)."""
    if value.dim() != 2 or "head" in key:
        return False
    k = key.replace("downsample_layers.0.", "stem.")
    k = re.sub(r"stages.([0-9]+).([0-9]+)", r"stages.\1.blocks.\2", k)
    k = re.sub(r"downsample_layers.([0-9]+).([0-9]+)", r"stages.\1.downsample.\2", k)
    k = k.replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc")
    if k in model_keys and model_keys[k].numel() != value.numel():
        raise ValueError(f"{source}: '{k}' has shape {tuple(value.shape)} in the checkpoint but "
                         f"{tuple(model_keys[k].shape)} in the model (wrong arch?)")
    return k not in model_keys


@dataclass
class CheckpointReport:
    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.format} checkpoint, {len(self.loaded)} tensors loaded"]
        for label, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys),
                            ("skipped (classifier shape differs)", self.skipped_head)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''}")
        return "\n".join(lines)


def load_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | dict, *, allow_pickle: bool = False,
                    prefix: str = "") -> CheckpointReport:
    """Load a timm / official / FCMAE checkpoint into a timm ConvNeXt-V2 (``prefix`` selects a submodule's keys).

    Classifier tensors (``head.fc.*``) whose shape differs are skipped and reported (a 1000-class
    checkpoint into a 100-class model). Any other shape mismatch raises ``ValueError`` naming the
    key; so does a checkpoint that matches no key, or one missing backbone tensors.
    """
    if isinstance(path_or_state, dict):
        source, state = "state dict", unwrap_state_dict(path_or_state)
    else:
        source, state = str(path_or_state), read_state_dict(path_or_state, allow_pickle)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    converted, fmt, orphans = to_timm(state, model, source)
    if fmt == "unknown":
        raise ValueError(f"{source}: unrecognised checkpoint layout (expected timm, official ConvNeXt-V2 or FCMAE "
                         f"keys); first keys: {list(state)[:6]}")
    own = model.state_dict()
    report = CheckpointReport(source=source, format=fmt, unexpected_keys=list(orphans))
    to_load = {}
    for key, value in converted.items():
        if key not in own:
            report.unexpected_keys.append(key)
        elif own[key].shape != value.shape:
            if key.startswith("head.fc."):
                report.skipped_head.append(key)
                continue
            raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(own[key].shape)} in the model (wrong arch?)")
        else:
            to_load[key] = value
    if not to_load:
        raise ValueError(f"{source}: no tensor matches the model ({fmt} layout); first keys: {list(converted)[:6]}")
    report.loaded = sorted(to_load)
    report.missing_keys = sorted(set(own) - set(to_load) - set(report.skipped_head))
    backbone_missing = [k for k in report.missing_keys if not k.startswith("head.")]
    if backbone_missing:
        raise ValueError(f"{source}: backbone tensors missing from the checkpoint: {backbone_missing[:8]}"
                         f"{' …' if len(backbone_missing) > 8 else ''} (wrong arch or a truncated file?)")
    model.load_state_dict(to_load, strict=False)
    return report


# --- the reverse, for tests and tools: timm model → official / FCMAE layouts ---------------------
def timm_to_official(model: nn.Module) -> dict[str, torch.Tensor]:
    """Official ConvNeXt-V2 key names and shapes for a timm model (inverse of timm's filter)."""
    out = {}
    for key, value in model.state_dict().items():
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
        out[k] = value.clone()
    return out


def official_to_fcmae(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names → the FCMAE sparse-encoder layout (``encoder.`` prefix, Minkowski kernels)."""
    out = {}
    for key, value in official.items():
        if key.startswith(("head.", "norm.")):
            continue  # the FCMAE encoder has no final norm / classifier
        is_stem = key.startswith("downsample_layers.0.")
        if key.endswith(".weight") and value.dim() == 4 and not is_stem:
            c_out, c_in, kh, kw = value.shape
            if c_in == 1 and "dwconv" in key:  # depthwise: (k*k, dim)
                value = value.transpose(3, 2).reshape(c_out, kh * kw).permute(1, 0)
            else:  # (k*k, in, out)
                value = value.transpose(3, 2).reshape(c_out, c_in, kh * kw).permute(2, 1, 0)
            key = key.removesuffix(".weight") + ".kernel"
        elif not is_stem and re.search(r"\.norm\.|downsample_layers\.[1-3]\.0\.", key):
            key = re.sub(r"\.(weight|bias)$", r".ln.\1", key)
        elif re.search(r"pwconv[12]\.", key):
            key = re.sub(r"\.(weight|bias)$", r".linear.\1", key)
        elif "grn" in key:
            value = value.reshape(1, -1)
        if key.endswith("bias") and re.search(r"(dwconv|downsample_layers\.[1-3]\.1)\.bias$", key):
            value = value.reshape(1, -1)
        out[f"encoder.{key}"] = value.contiguous()
    out["mask_token"] = torch.zeros(1, 512, 1, 1)
    out["decoder.0.weight"] = torch.zeros(4, 4)
    out["proj.weight"] = torch.zeros(512, 8, 1, 1)
    out["pred.weight"] = torch.zeros(8, 512, 1, 1)
    return out
