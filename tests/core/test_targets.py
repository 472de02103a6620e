"""Targets the model does not drive through the wrapped module's own call (issue: real inputs, kind A).

Each member of the kind is either handled correctly — forward, gradients, merge and
merge_and_unload agree with a reference — or refused at ``apply_adapters`` time: presets skip it and
list it in the report, an explicit regex raises naming the layer and the reason.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liera_vision.core import (
    AdapterConfig,
    adapter_layers,
    apply_adapters,
    merge_adapters,
    merge_and_unload,
    unmerge_adapters,
)
from tests.core.reference import adapter_params, randomize_, reference_weight

CFG = dict(rank=2, alpha=2.0, targets="all")


def perturb(model: nn.Module) -> nn.Module:
    for layer in adapter_layers(model).values():
        randomize_(layer, scale=0.3)
    return model


def check_agreement(model: nn.Module, fresh: nn.Module, x, out=lambda y: y) -> None:
    """Adapted forward == reference; merged forward equal; merge_and_unload's state loads into ``fresh``."""
    adapted = out(model(x))
    merge_adapters(model)
    assert torch.allclose(out(model(x)), adapted, atol=1e-5)
    unmerge_adapters(model)
    assert torch.allclose(out(model(x)), adapted, atol=1e-6)
    plain = merge_and_unload(model)
    assert not adapter_layers(plain)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert torch.allclose(out(fresh(x)), adapted, atol=1e-5)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_out_proj_is_read_not_called():
    """nn.MultiheadAttention passes out_proj.weight / .bias to F.multi_head_attention_forward: the wrapper's
    ``weight`` is the adapted weight, so forward, gradients and merging agree."""
    model, report = apply_adapters(Attention().eval(), AdapterConfig(**CFG))
    assert sorted(adapter_layers(model)) == ["attn.out_proj", "fc"]
    perturb(model)
    x = torch.randn(2, 5, 16)
    layer = model.attn.out_proj
    # reference: the attention with W' written into a plain copy
    ref = Attention().eval()
    with torch.no_grad():
        ref.attn.out_proj.weight.copy_(reference_weight(layer))
        ref.fc.weight.copy_(reference_weight(model.fc))
    assert torch.allclose(model(x), ref(x), atol=1e-5)
    params = adapter_params(layer)
    grads = torch.autograd.grad(model(x).square().sum(), params)
    assert all(torch.count_nonzero(g) > 0 for g in grads)
    # gradients equal plain autograd through the reference weight
    w = reference_weight(layer)
    ref_out = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), 16, 2, model.attn.in_proj_weight,
        model.attn.in_proj_bias, None, None, False, 0.0, w, layer.bias, training=False, need_weights=False)[0]
    ref_grads = torch.autograd.grad(model.fc(ref_out.transpose(0, 1)).square().sum(), params)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the inference fast path reads the same weight
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    check_agreement(model, Attention().eval(), x)


def test_transformer_encoder_layer_fast_path_reads_child_weights():
    torch.manual_seed(0)
    def make():
        return nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)

    torch.manual_seed(0)
    model = make().eval()
    apply_adapters(model, AdapterConfig(**CFG))
    assert sorted(adapter_layers(model)) == ["linear1", "linear2", "self_attn.out_proj"]
    perturb(model)
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        fast = model(x)  # eval + no_grad: torch's fused encoder path, which reads linear1.weight …
    slow = model(x)       # autograd path, which calls linear1(x)
    assert torch.allclose(fast, slow, atol=1e-5)
    torch.manual_seed(0)
    check_agreement(model, make().eval(), x)


class BeitStyleAttention(nn.Module):
    """timm's BEiT / EVA attention: ``F.linear(x, self.qkv.weight, qkv_bias)`` with a separate q/v bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(8, 24, bias=False)
        self.q_bias = nn.Parameter(torch.randn(8) * 0.1)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        bias = torch.cat([self.q_bias, torch.zeros(16)])
        q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


def test_parent_reading_child_weight_in_functional_call():
    model, _ = apply_adapters(BeitStyleAttention(), AdapterConfig(**CFG))
    perturb(model)
    x = torch.randn(2, 3, 8)
    ref = BeitStyleAttention()
    with torch.no_grad():
        ref.qkv.weight.copy_(reference_weight(model.qkv))
        ref.proj.weight.copy_(reference_weight(model.proj))
    assert torch.allclose(model(x), ref(x), atol=1e-5)
    check_agreement(model, BeitStyleAttention(), x)


class Shared(nn.Module):
    """One Linear reachable under two names (a shared block)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 6)
        self.b = self.a
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.b(torch.tanh(self.a(x))))


def test_module_shared_under_two_names_is_wrapped_everywhere():
    model, report = apply_adapters(Shared(), AdapterConfig(**CFG))
    assert model.a is model.b and list(adapter_layers(model)) == ["a", "out"]
    perturb(model)
    x = torch.randn(3, 6)
    ref = Shared()
    with torch.no_grad():
        ref.a.weight.copy_(reference_weight(model.a))
        ref.out.weight.copy_(reference_weight(model.out))
    assert torch.allclose(model(x), ref(x), atol=1e-5)  # both uses go through the adapter
    adapted = model(x)
    plain = merge_and_unload(model)
    assert plain.a is plain.b and isinstance(plain.a, nn.Linear)
    assert torch.allclose(plain(x), adapted, atol=1e-5)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight  # tied weights, two modules
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.dec(self.enc(x)))


def _weight_norm_net():
    import warnings

    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old API is deprecated but still met in the wild
        torch.nn.utils.weight_norm(net[0])
    return net


def _parametrized_net():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    torch.nn.utils.parametrizations.orthogonal(net[0])
    return net


def _spectral_net():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    torch.nn.utils.spectral_norm(net[0])
    return net


def _lazy_net():
    return nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))


def _quantized_net():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    net[0].weight = nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    return net


def _meta_net():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    net[0].to("meta")
    return net


@pytest.mark.parametrize("make, refused, reason", [
    (Tied, "dec", r"shared with \['enc.weight'\] \(tied weights\)"),
    (_weight_norm_net, "0", r"not a stored parameter \(computed by weight_norm"),
    (_spectral_net, "0", r"not a stored parameter"),
    (_parametrized_net, "0", r"not a stored parameter \(computed by parametrize\)"),
    (_lazy_net, "0", r"lazy module"),
    (_quantized_net, "0", r"dtype torch.int8, not floating point"),
    (_meta_net, "0", r"meta device"),
])
def test_layers_an_adapter_cannot_handle_are_skipped_by_presets_and_refused_by_name(make, refused, reason):
    model, report = apply_adapters(make(), AdapterConfig(**CFG))
    skipped = dict(report.skipped)
    assert refused in skipped
    assert re.search(reason, skipped[refused]), skipped[refused]
    assert refused not in adapter_layers(model)
    assert f"skipped '{refused}'" in str(report)
    fresh = make()
    before = {n: p.requires_grad for n, p in fresh.named_parameters()}
    with pytest.raises(ValueError, match=rf"layer '{refused}' cannot be adapted: .*{reason}"):
        apply_adapters(fresh, AdapterConfig(rank=1, alpha=1.0, targets=[refused]))
    assert not adapter_layers(fresh)
    assert {n: p.requires_grad for n, p in fresh.named_parameters()} == before


def test_tied_module_is_refused_for_both_names():
    model, report = apply_adapters(Tied(), AdapterConfig(**CFG))
    assert {name for name, _ in report.skipped} == {"enc", "dec"}
    assert list(adapter_layers(model)) == ["head"]


def test_hooks_and_instance_forward_run_with_the_adapted_weight():
    """A forward hook on the wrapped layer, or a forward replaced on the instance, still runs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    calls = []
    net[0].register_forward_hook(lambda m, i, o: calls.append(1) or o * 2)
    original = net[1].forward
    net[1].forward = lambda x: original(x) + 1.0
    model, _ = apply_adapters(net, AdapterConfig(**CFG))
    perturb(model)
    x = torch.randn(3, 4)
    w0, w1 = reference_weight(model[0]), reference_weight(model[1])
    expected = F.linear(F.linear(x, w0, model[0].bias) * 2, w1, model[1].bias) + 1.0
    assert torch.allclose(model(x), expected, atol=1e-5) and calls


def test_wrapper_exposes_the_wrapped_layers_attributes():
    model, _ = apply_adapters(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Linear(8, 2)), AdapterConfig(**CFG))
    assert model[0].stride == (2, 2) and model[0].in_channels == 3 and model[1].out_features == 2
    assert model[1].bias is model[1].base_layer.bias
    with pytest.raises(AttributeError):
        model[1].no_such_attribute  # noqa: B018


def test_a_layer_another_adapter_saves_whole_is_not_adapted_again():
    """Adapter 'default' trains layer 2 whole (modules_to_save); a second adapter may not wrap it: its file would
    hold both and load nowhere. A regex naming it raises; a preset passes it over and says why."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    apply_adapters(model, AdapterConfig(rank=1, targets=["0"], modules_to_save=["2"]))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer '2' cannot be adapted: adapter 'default' trains '2' whole "
                                         r"\(modules_to_save\)"):
        apply_adapters(model, AdapterConfig(rank=1, targets=["2"]), adapter_name="b")
    assert model.state_dict().keys() == before.keys() and isinstance(model[2], nn.Linear)
    _, report = apply_adapters(model, AdapterConfig(rank=1, targets="all"), adapter_name="b")
    assert [layer.name for layer in report.layers] == ["0"]
    assert report.skipped == [("2", "adapter 'default' trains '2' whole (modules_to_save)")]


def test_pefts_own_models_and_layers_are_left_to_peft():
    """A PeftModel's adapters are PEFT's: core's functions refuse it by name instead of wrapping PEFT's
    lora_A / lora_B or stripping its layers; a PEFT layer inside a plain model is not a target."""
    peft = pytest.importorskip("peft")
    from liera_vision.core import merge_and_unload, save_adapter, set_adapter

    base = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0"]))
    for call in (lambda: apply_adapters(lora, AdapterConfig(rank=1, targets="all")),
                 lambda: save_adapter(lora, "never.safetensors"), lambda: merge_and_unload(lora),
                 lambda: set_adapter(lora, "default")):
        with pytest.raises(ValueError, match=r"PeftModel is a Hugging Face PEFT model, whose adapters PEFT manages"):
            call()
    holder = nn.Sequential(lora.base_model.model, nn.Linear(3, 2))  # PEFT's layer inside a plain model
    with pytest.raises(ValueError, match=r"layer '0.0.base_layer' cannot be adapted: it belongs to Hugging Face "
                                         r"PEFT's Linear '0.0' \(adapt the model before get_peft_model"):
        apply_adapters(holder, AdapterConfig(rank=1, targets=[r"0\.0\.base_layer"]))
    _, report = apply_adapters(holder, AdapterConfig(rank=1, targets="all"))
    assert [layer.name for layer in report.layers] == ["0.2", "1"]
    assert ("0.0.base_layer", "it belongs to Hugging Face PEFT's Linear '0.0' (adapt the model before "
                              "get_peft_model, or through liera_vision.peft)") in report.skipped
    assert all(name.startswith("0.0.") for name, _ in report.skipped)  # also PEFT's lora_A / lora_B
