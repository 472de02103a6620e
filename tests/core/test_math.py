"""The adapter math, tested as math: identity at init, gradients vs autograd, exp vs Taylor,
merge / unmerge round trips, rank capacity, DoRA and PiSSA, zero entries — for every point of the
three method axes (composition × init × post-step) on every layer kind, 1-d to 3-d."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from liera_vision.core import COMPOSITIONS, INITS, POST_STEPS, AdapterConfig, AdapterLayer, composed_weight
from tests.conftest import input_for, layer_zoo
from tests.core.reference import adapter_params, randomize_, reference_delta, reference_module, reference_weight

GRID = [dict(composition=c, init=i, post=p)
        for c, i, p in itertools.product(COMPOSITIONS, INITS, [None, *POST_STEPS])]
# every layer kind with every point of the axes grid and both factorizations; the fast tier keeps every
# axes point on four representative layers and the plain compositions on every layer
REPRESENTATIVE = {"dw7x7", "conv1d_grouped", "conv3d_grouped_stride", "linear"}


def _cases():
    for (layer, axes, factorization) in itertools.product(layer_zoo(), GRID, ["kernel", "flat"]):
        fast = factorization == "kernel" and (layer in REPRESENTATIVE or (axes["init"], axes["post"]) == ("lora", None))
        yield pytest.param(layer, axes, factorization, marks=() if fast else pytest.mark.slow,
                           id=f"{layer}-{axes['composition']}-{axes['init']}-{axes['post'] or 'none'}-{factorization}")


CASES = list(_cases())
# rank 2 keeps every zoo layer within its rank limit (the 1-input-channel depthwise has fan-in 49)
RANK = 2


def adapt(layer: nn.Module, factorization: str = "kernel", **kw) -> AdapterLayer:
    """A wrapped layer; alpha = rank (scale 1) unless given, so that random factors stay in exp's range."""
    kw.setdefault("rank", RANK)
    kw.setdefault("alpha", float(kw["rank"]))
    return AdapterLayer(layer, AdapterConfig(factorization=factorization, **kw), name="zoo")


def A(layer: AdapterLayer) -> torch.Tensor:
    return layer.lora_A[layer.active_adapter]


def B(layer: AdapterLayer) -> torch.Tensor:
    return layer.lora_B[layer.active_adapter]


@pytest.mark.parametrize("name, cfg, factorization", CASES)
def test_identity_at_initialisation(name, cfg, factorization):
    base = layer_zoo()[name]
    x = input_for(base)
    expected = base(x)
    layer = adapt(base, factorization, **cfg)
    assert torch.allclose(layer(x), expected, atol=1e-6, rtol=0), name
    assert torch.allclose(layer.effective_weight(), base.weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, cfg, factorization", CASES)
def test_forward_and_gradients_match_plain_autograd_reference(name, cfg, factorization):
    """The custom autograd function and the wrapper equal the textbook formula, values and gradients."""
    base = layer_zoo()[name]
    layer = randomize_(adapt(base, factorization, **cfg))
    x = input_for(base)
    # the wrapper's forward equals an independent copy of the layer carrying W' (geometry preserved)
    assert torch.allclose(layer(x), reference_module(layer)(x), atol=1e-5, rtol=1e-5), name

    target = torch.randn_like(layer(x))
    params = adapter_params(layer)
    ours = torch.autograd.grad((layer(x) * target).sum(), params)
    ref_out = torch.func.functional_call(layer.base_layer, {"weight": reference_weight(layer)}, (x,))
    theirs = torch.autograd.grad((ref_out * target).sum(), params)
    for p, a, b in zip(params, ours, theirs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (name, p.shape)


@pytest.mark.parametrize("composition", list(COMPOSITIONS))
@pytest.mark.parametrize("zero_fallback", [False, True])
@pytest.mark.parametrize("pissa", [False, True])
def test_composed_weight_gradcheck(composition, zero_fallback, pissa):
    """Finite differences (float64) for W, B and A, including entries where W == 0."""
    torch.manual_seed(0)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    w[0, 0] = 0.0
    w.requires_grad_(True)
    B = torch.randn(6 * 3, 4, dtype=torch.float64, requires_grad=True)  # kernel factorization: 6·3 x 2·3
    A = torch.randn(4, 2 * 3, dtype=torch.float64, requires_grad=True)
    B0 = torch.randn_like(B).detach() if pissa else None
    A0 = torch.randn_like(A).detach() if pissa else None

    def fn(w, B, A):
        return composed_weight(w, B, A, B0=B0, A0=A0, scaling=0.3, composition=composition,
                               zero_fallback=zero_fallback)

    assert torch.autograd.gradcheck(fn, (w, B, A))


def test_exp_and_taylor_agree_to_second_order():
    """‖W ⊙ (e^{tΔ} − 1 − tΔ)‖ is O(t²): elementwise ≤ |W| (tΔ)²/2 · e^{|tΔ|}, and halving t quarters it."""
    torch.manual_seed(0)
    base = nn.Conv2d(16, 16, 7, padding=3, groups=16).double()
    source = randomize_(adapt(base, composition="exp"), scale=1.0).state_dict()
    source = {k: v for k, v in source.items() if "lora_scaling" not in k}  # the scale is what varies
    errors = []
    for t in [0.02, 0.01, 0.005, 0.0025]:
        exact = adapt(base, composition="exp", alpha=RANK * t)
        taylor = adapt(base, composition="taylor", alpha=RANK * t)
        exact.load_state_dict(source, strict=False)
        taylor.load_state_dict(source, strict=False)
        with torch.no_grad():
            d = exact.delta()
            assert torch.equal(d, taylor.delta())
            gap = (exact.effective_weight() - taylor.effective_weight()).abs()
            bound = base.weight.abs() * d.square() / 2 * d.abs().exp()
        assert (gap <= bound * (1 + 1e-9) + 1e-15).all()
        errors.append(gap.norm().item())
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(3.8 < r < 4.2 for r in ratios), ratios


@pytest.mark.parametrize("name, cfg, factorization", CASES)
def test_merge_unmerge_round_trip(name, cfg, factorization):
    base = layer_zoo()[name]
    original = base.weight.detach().clone()
    layer = randomize_(adapt(base, factorization, **cfg))
    x = input_for(base)
    adapted = layer(x).detach()
    delta = layer.get_delta_weight()
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer.base_layer.weight, original + delta, atol=1e-6)
    assert torch.allclose(layer(x), adapted, atol=1e-4, rtol=1e-4), name
    layer.unmerge()
    rel = (layer.base_layer.weight - original).norm() / original.norm()
    assert rel <= 1e-5
    assert torch.allclose(layer(x), adapted, atol=1e-5, rtol=1e-5)


def test_unmerge_where_the_lie_factor_is_zero():
    """Taylor with ΔW = −1 makes W' = 0: unmerging must not divide by (1 + ΔW)."""
    base = nn.Linear(4, 3)
    original = base.weight.detach().clone()
    layer = adapt(base, rank=1)
    with torch.no_grad():
        A(layer).fill_(1.0)
        B(layer).fill_(-1.0)
    layer.merge()
    assert torch.count_nonzero(layer.base_layer.weight) == 0
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original)


@pytest.mark.parametrize("r", [1, 4, 8])
def test_rank_capacity(r):
    """rank(ΔW_LoRA) ≤ r while the Lie update W ⊙ ΔW of a full-rank W is full rank."""
    torch.manual_seed(0)
    n = 48
    base = nn.Linear(n, n, bias=False)
    assert torch.linalg.matrix_rank(base.weight).item() == n
    lora = randomize_(adapt(base, method="lora", rank=r), scale=1.0)
    liera = randomize_(adapt(base, method="liera", rank=r), scale=1.0)
    assert torch.linalg.matrix_rank(lora.get_delta_weight()).item() <= r
    assert torch.linalg.matrix_rank(liera.delta()).item() <= r  # the algebra element is low rank …
    assert torch.linalg.matrix_rank(liera.get_delta_weight()).item() == n  # … its effect on W is not


def test_rank_capacity_conv_kernel():
    """Same for a 3×3 conv seen as a (C_out, C_in·9) matrix, under the flat factorization."""
    torch.manual_seed(0)
    base = nn.Conv2d(32, 24, 3)
    lora = randomize_(adapt(base, "flat", method="lora", rank=2), scale=1.0)
    liera = randomize_(adapt(base, "flat", method="liera", rank=2), scale=1.0)
    assert torch.linalg.matrix_rank(lora.get_delta_weight().flatten(1)).item() <= 2
    assert torch.linalg.matrix_rank(liera.get_delta_weight().flatten(1)).item() == 24


def test_dora_magnitude_is_per_output_channel_and_controls_the_norm():
    base = nn.Conv2d(16, 32, 3, groups=4)
    layer = randomize_(adapt(base, variant="dora"))
    magnitude = layer.lora_magnitude["default"]
    assert magnitude.shape == (32,)
    fresh = adapt(nn.Conv2d(16, 32, 3, groups=4), variant="dora")
    # over (C_in/groups, kh, kw)
    assert torch.allclose(fresh.lora_magnitude["default"], fresh.base_layer.weight.reshape(32, -1).norm(dim=1))
    with torch.no_grad():
        magnitude.copy_(torch.linspace(0.5, 2.0, 32))
        norms = layer.effective_weight().reshape(32, -1).norm(dim=1)
    assert torch.allclose(norms, torch.linspace(0.5, 2.0, 32), atol=1e-5)


@pytest.mark.parametrize("method", [dict(method="liera"), dict(method="lora")])
def test_pissa_starts_at_principal_components(method):
    torch.manual_seed(0)
    base = nn.Linear(20, 16)
    layer = adapt(base, variant="pissa", rank=4, alpha=2.0, **method)
    u, s, vh = torch.linalg.svd(base.weight.detach().double())
    principal = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose((0.5 * B(layer) @ A(layer)).double(), principal, atol=1e-5)
    assert torch.equal(layer.lora_A_start["default"], A(layer).detach())
    assert torch.count_nonzero(layer.delta()) == 0


def test_pissa_kernel_factorization_pads_missing_singular_values():
    """A depthwise 7×7 under the kernel factorization is a 7-row matrix: components 8.. start as LoRA."""
    base = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    layer = adapt(base, variant="pissa", rank=2)  # inner = 14 > 7 singular values
    assert B(layer).shape == (7, 14)
    assert torch.count_nonzero(B(layer)[:, 7:]) == 0 and torch.count_nonzero(A(layer)[7:]) > 0
    x = torch.randn(1, 8, 9, 9)
    out = layer(x).sum()
    out.backward()
    assert torch.count_nonzero(B(layer).grad[:, 7:]) > 0  # the padded components learn


def _train_steps(layer: AdapterLayer, x: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        (layer(x) - 1.0).square().mean().backward()
        opt.step()


def test_zero_entries_stay_zero_under_lie_update_and_move_with_fallback():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    with torch.no_grad():
        base.weight[:, :2] = 0.0
        base.weight.requires_grad_(False)
    x = torch.randn(16, 8)
    zero = base.weight == 0
    for cfg, should_move in [(dict(method="liera"), False), (dict(method="liera", composition="exp"), False),
                             (dict(method="liera", zero_weight_fallback=True), True), (dict(method="lora"), True)]:
        layer = adapt(nn.Linear(8, 6).requires_grad_(False), **cfg)
        with torch.no_grad():
            layer.base_layer.weight.copy_(base.weight)
        _train_steps(layer, x)
        moved = layer.effective_weight().detach()[zero].abs().max().item()
        assert (moved > 1e-4) == should_move, (cfg, moved)
        assert not torch.equal(layer.effective_weight()[~zero], base.weight[~zero])


def test_rank_dropout_is_training_only_and_keeps_identity():
    torch.manual_seed(0)
    base = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 8, 8)
    for variant in [None, "pissa"]:
        layer = adapt(base, rank=4, dropout=0.5, variant=variant).train()
        assert torch.allclose(layer(x), base(x), atol=1e-6)  # identity holds under any mask
        randomize_(layer)
        outs = {tuple(layer(x).flatten()[:8].tolist()) for _ in range(6)}
        assert len(outs) > 1  # masks differ between steps
        layer.eval()
        assert torch.allclose(layer(x), reference_module(layer)(x), atol=1e-5)


def test_delta_is_the_reference_delta():
    base = nn.Conv2d(8, 16, 3)
    layer = randomize_(adapt(base, variant="pissa"))
    assert torch.allclose(layer.delta(), reference_delta(layer).detach(), atol=1e-6)


def test_non_square_kernel_factor_shapes():
    """Under ``kernel`` a (kh, kw) kernel uses kh rows / kw columns (loralib's rule for kh == kw)."""
    base = nn.Conv2d(8, 6, kernel_size=(3, 5))
    kernel = adapt(base, rank=2)
    assert B(kernel).shape == (6 * 3, 2 * 3) and A(kernel).shape == (2 * 3, 8 * 5)
    flat = adapt(base, "flat", rank=2)
    assert B(flat).shape == (6, 2) and A(flat).shape == (2, 8 * 15)


def test_conv_subclass_with_its_own_forward():
    """timm's TF-style 'SAME' conv pads inside forward(): the adapter must run that forward, not bypass it."""
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    base = Conv2dSame(8, 8, kernel_size=3, stride=2).requires_grad_(False)
    x = torch.randn(1, 8, 9, 9)
    expected = base(x)
    layer = adapt(base)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    randomize_(layer)
    assert torch.allclose(layer(x), reference_module(layer)(x), atol=1e-5)
    layer(x).sum().backward()
    assert A(layer).grad is not None and layer.base_layer.weight.grad is None


@pytest.mark.parametrize("axes", [{}, dict(post="dora"), dict(init="pissa"), dict(init="pissa", post="dora")])
def test_reset_parameters_restores_identity_on_new_weights(axes):
    """After loading new base weights, reset_parameters re-derives PiSSA factors / DoRA magnitude from them."""
    base = nn.Conv2d(8, 16, 3)
    layer = randomize_(adapt(base, **axes))
    with torch.no_grad():
        base.weight.mul_(3.0).add_(0.1)
    layer.reset_parameters()
    x = torch.randn(1, 8, 7, 7)
    assert torch.allclose(layer(x), base(x), atol=1e-5)
    if axes.get("post") == "dora":
        assert torch.allclose(layer.lora_magnitude["default"], base.weight.reshape(16, -1).norm(dim=1))
