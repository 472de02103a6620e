"""Runtime behaviour: memory kept for backward, autocast and dtypes, torch.compile, whole ConvNeXt-V2 models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    AdapterLayer,
    adapter_layers,
    apply_adapters,
    merge_and_unload,
)
from tests.core.reference import randomize_
from tests.core.test_math import GRID


def weight_sized_saved(fn, weight: torch.Tensor) -> int:
    """Distinct weight-sized tensors autograd keeps for backward during ``fn()``, the parameter excluded."""
    ptrs = set()

    def pack(t):
        if t.numel() == weight.numel() and t.data_ptr() != weight.data_ptr():
            ptrs.add(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().sum().backward()
    return len(ptrs)


@pytest.mark.parametrize("cfg", [dict(method="liera"), dict(method="liera", composition="exp"), dict(method="lora")],
                         ids=["taylor", "exp", "additive"])
def test_backward_keeps_at_most_one_weight_sized_tensor(cfg):
    base = nn.Conv2d(64, 64, 7, padding=3, groups=64)  # weight 3136 entries, input 6*64*9*9 = 31104
    layer = randomize_(AdapterLayer(base, AdapterConfig(rank=4, alpha=4.0, **cfg)))
    x = torch.randn(6, 64, 9, 9)
    assert weight_sized_saved(lambda: layer(x), base.weight) <= 1

    def naive():  # the textbook expression through plain autograd
        d = (layer.lora_B["default"] @ layer.lora_A["default"]).view(base.weight.shape)
        w = base.weight * torch.exp(d) if cfg.get("composition") == "exp" else base.weight + base.weight * d
        return F.conv2d(x, w, base.bias, padding=3, groups=64)

    if cfg.get("composition") == "exp":  # the test can tell: plain autograd keeps exp(ΔW) beside W'
        assert weight_sized_saved(naive, base.weight) >= 2


def test_autocast_keeps_adapters_fp32():
    layer = randomize_(AdapterLayer(nn.Conv2d(8, 16, 3), AdapterConfig(rank=2)))
    x = torch.randn(2, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    for p in (layer.lora_A["default"], layer.lora_B["default"]):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        assert torch.count_nonzero(p.grad) > 0


def test_half_precision_base_gets_fp32_adapters():
    base = nn.Conv2d(8, 16, 3).to(torch.bfloat16)
    layer = randomize_(AdapterLayer(base, AdapterConfig(rank=2, alpha=2.0, post="dora")))
    assert layer.lora_A["default"].dtype == layer.lora_magnitude["default"].dtype == torch.float32
    y = layer(torch.randn(2, 8, 10, 10, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_B["default"].grad.dtype == torch.float32


def test_to_device_and_dtype():
    layer = randomize_(AdapterLayer(nn.Linear(6, 4), AdapterConfig(rank=2)))
    x = torch.randn(3, 6)
    expected = layer(x).double()
    layer.merge()
    layer = layer.to(device="cpu", dtype=torch.float64)
    assert layer.lora_A["default"].dtype == torch.float64 and layer._unmerged["default"].dtype == torch.float64
    layer.unmerge()
    assert torch.allclose(layer(x.double()), expected, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_of_an_adapted_model_on_cpu():
    """Outputs and every adapter gradient as in eager mode. Under torch 2.1 inductor got the stem's factor
    gradients wrong (uninitialised memory) in this very model; there the adapted layers run eagerly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.GELU(), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                          nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, targets="all"))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 8  # A and B of four layers
    x = torch.randn(2, 3, 32, 32)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.sum(), list(trainable.values()))
    compiled = torch.compile(model)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), list(trainable.values()))
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(trainable, grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("composition", ["taylor", "exp", "additive"])
def test_torch_func_grad_jacrev_and_vmap_agree_with_autograd_and_a_loop(composition):
    """torch.func transforms an adapted model (per-sample gradients, Jacobians, batching by vmap)."""
    from torch.func import functional_call, grad, jacrev, vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, groups=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    apply_adapters(model, AdapterConfig(rank=2, alpha=2.0, composition=composition, targets="all"))
    for layer in adapter_layers(model).values():
        randomize_(layer)
    x = torch.randn(6, 3, 5, 5)
    params = {n: p.detach() for n, p in model.named_parameters()}
    factors = {n: p for n, p in params.items() if "lora_" in n}

    def loss(p, xb):
        return functional_call(model, {**params, **dict(model.named_buffers()), **p}, (xb,)).square().sum()

    expected = torch.autograd.grad(loss({n: p.requires_grad_() for n, p in factors.items()}, x), list(factors.values()))
    got = grad(loss)({n: p.detach() for n, p in factors.items()}, x)
    for (name, g), e in zip(got.items(), expected):
        torch.testing.assert_close(g, e, msg=name)
    per_sample = vmap(grad(loss), in_dims=(None, 0))(factors, x.unsqueeze(1))  # one gradient per image
    for name, g in per_sample.items():
        torch.testing.assert_close(g.sum(0), got[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(vmap(model)(x.unsqueeze(1)).squeeze(1), model(x))
    jac = jacrev(lambda p: functional_call(model, {**params, **p}, (x[:1],)))(factors)
    assert all(j.shape == (1, 3, *factors[n].shape) and j.abs().sum() > 0 for n, j in jac.items())


FAST = ({"composition": "taylor", "init": "lora", "post": None},
        {"composition": "exp", "init": "pissa", "post": "dora"},
        {"composition": "additive", "init": "lora", "post": None})
ATTO_CASES = [pytest.param(g, marks=() if g in FAST else pytest.mark.slow,
                           id=f"{g['composition']}-{g['init']}-{g['post'] or 'none'}") for g in GRID]


@pytest.mark.parametrize("cfg", ATTO_CASES)
def test_convnextv2_atto_identity_training_and_merge(cfg, atto_factory):
    """On a whole model: identity at init, only adapters and head learn, merge_and_unload loads into timm."""
    torch.manual_seed(0)
    model = atto_factory()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model, report = apply_adapters(model, AdapterConfig(rank=4, modules_to_save=["head"], **cfg))
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert len(report.layers) == 1 + 3 + 12

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
        opt.step()
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    adapted = model(x).detach()
    assert not torch.allclose(adapted, expected, atol=1e-4)

    merged = merge_and_unload(model)
    fresh = atto_factory()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert torch.allclose(fresh(x), adapted, atol=1e-4)
