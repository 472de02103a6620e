"""Writers of the checkpoint layouts the loaders read, for tests: official, FCMAE (dense / sparse).

The official names come from ``liera_vision.models.timm_to_official``; what only FCMAE files carry
is fabricated here with the real key names and small shapes (``models/fcmae.py`` and
``models/convnextv2_sparse.py`` of facebookresearch/ConvNeXt-V2): a decoder of one ConvNeXt-V2
block, the mask token, the projection and the prediction head.
"""

from __future__ import annotations

import re

import pytest
import torch

from liera_vision.models import timm_to_official


@pytest.fixture
def one_thread():
    """Small models: more threads only add overhead, and contend with other processes on a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretraining_parts(encoder_dim: int, decoder_dim: int = 16, patch: int = 32) -> dict[str, torch.Tensor]:
    """The FCMAE model's tensors besides its encoder (decoder_embed_dim shrunk from 512 to ``decoder_dim``)."""
    g = torch.Generator().manual_seed(0)
    d, h = decoder_dim, 4 * decoder_dim
    shapes = {
        "mask_token": (1, d, 1, 1),
        "proj.weight": (d, encoder_dim, 1, 1), "proj.bias": (d,),
        "decoder.0.dwconv.weight": (d, 1, 7, 7), "decoder.0.dwconv.bias": (d,),
        "decoder.0.norm.weight": (d,), "decoder.0.norm.bias": (d,),
        "decoder.0.pwconv1.weight": (h, d), "decoder.0.pwconv1.bias": (h,),  # 2-D: trips timm's filter
        "decoder.0.grn.gamma": (1, 1, 1, h), "decoder.0.grn.beta": (1, 1, 1, h),
        "decoder.0.pwconv2.weight": (d, h), "decoder.0.pwconv2.bias": (d,),
        "pred.weight": (patch * patch * 3, d, 1, 1), "pred.bias": (patch * patch * 3,),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def official_state(model, grn: str = "4d") -> dict[str, torch.Tensor]:
    """The official dense layout of a timm model; ``grn='2d'`` stores GRN gamma / beta as ``(1, C)``."""
    state = timm_to_official(model)
    if grn == "2d":
        state = {k: v.reshape(1, -1) if ".grn." in k else v for k, v in state.items()}
    return state


def fcmae_dense_state(model, grn: str = "2d", decoder: bool = True) -> dict[str, torch.Tensor]:
    """A released-style FCMAE file: official names, no classifier / final norm, decoder keys or not."""
    state = {k: v for k, v in official_state(model, grn).items() if not k.startswith(("head.", "norm."))}
    if decoder:
        state.update(pretraining_parts(model.num_features))
    return state


def official_to_fcmae(official: dict[str, torch.Tensor], decoder: bool = True) -> dict[str, torch.Tensor]:
    """Official names → the sparse FCMAE layout (``encoder.`` prefix, Minkowski kernels, ``ln`` / ``linear``)."""
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
            value = value.reshape(1, -1)  # MinkowskiGRN: (1, C)
        if key.endswith("bias") and re.search(r"(dwconv|downsample_layers\.[1-3]\.1)\.bias$", key):
            value = value.reshape(1, -1)  # Minkowski convolutions: (1, C)
        out[f"encoder.{key}"] = value.contiguous()
    if decoder:
        dims = [v.shape[0] for k, v in official.items() if re.fullmatch(r"downsample_layers\.\d\.1\.weight", k)]
        out.update(pretraining_parts(dims[-1]))
    return out
