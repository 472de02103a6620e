"""VTABClassifier: what trains, the schedule, checkpoints that keep only trainable state."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from liera_vision.core import AdapterConfig
from liera_vision.models import create_convnextv2, timm_to_official
from liera_vision.vtab import VTABClassifier, warmup_cosine_lr


def classifier(seed: int = 0, **kwargs) -> VTABClassifier:
    torch.manual_seed(seed)
    kwargs.setdefault("arch", "atto")
    kwargs.setdefault("num_classes", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init and zero-weight warnings
        return VTABClassifier(**kwargs)


def test_trainable_parameters_per_finetune_mode():
    liera = classifier(adapter=AdapterConfig(method="liera", rank=8, modules_to_save=["head"]))
    assert liera.parameter_count.trainable == 791_108  # atto, r=8: 758,368 adapter + head.norm 640 + head.fc 32,100
    assert liera.method == "liera-taylor-r8"
    lora_no_head = classifier(adapter=AdapterConfig(method="lora", rank=8))
    assert lora_no_head.adapter_config.modules_to_save == ["head"]  # the new head always trains
    assert lora_no_head.parameter_count.trainable == 791_108
    linear = classifier(finetune="linear")
    assert linear.parameter_count.trainable == 320 * 100 + 100 and linear.method == "linear"
    full = classifier(finetune="full")
    assert full.parameter_count.trainable == full.parameter_count.total
    assert classifier().adapter_config.name == "liera-taylor-r8"  # default adapter


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"adapter is set but finetune='full'"):
        classifier(finetune="full", adapter=AdapterConfig())
    with pytest.raises(ValueError, match=r"num_classes must be >= 2, got None"):
        classifier(num_classes=None)
    with pytest.raises(ValueError, match=r"finetune must be one of"):
        classifier(finetune="bitfit")
    with pytest.raises(ValueError, match=r"targets=\['nothing'\] .* matched no "):
        classifier(adapter=AdapterConfig(targets=["nothing"]))


def test_warmup_cosine_schedule():
    lr = dict(total_steps=110, warmup_steps=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    assert warmup_cosine_lr(0, **lr) == 1e-6
    assert math.isclose(warmup_cosine_lr(5, **lr), 1e-6 + (1e-3 - 1e-6) / 2)
    assert warmup_cosine_lr(10, **lr) == 1e-3
    assert math.isclose(warmup_cosine_lr(60, **lr), 1e-5 + (1e-3 - 1e-5) / 2)
    assert math.isclose(warmup_cosine_lr(110, **lr), 1e-5)
    values = [warmup_cosine_lr(s, **lr) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_checkpoint_keeps_trainable_state_and_checks_frozen_weights():
    model = classifier(seed=1, num_classes=4)
    with torch.no_grad():
        model.model.stages[0].blocks[0].conv_dw.lora_B["default"].add_(0.5)  # "trained" adapter
        model.model.head.fc.weight.add_(0.5)
    model.eval_history = [(0, 0.25), (1, 0.5)]
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable | {n for n, _ in model.named_buffers()}
    assert not any(k.endswith("base_layer.weight") for k in ckpt["state_dict"])

    same = classifier(seed=1, num_classes=4)  # same seed: same random frozen backbone
    same.on_load_checkpoint(ckpt)
    same.load_state_dict(ckpt["state_dict"])  # strict: the frozen tensors were filled in
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert same.eval_history == [(0, 0.25), (1, 0.5)]

    other = classifier(seed=2, num_classes=4)
    with pytest.raises(ValueError, match=r"different frozen weights .* random-initialised: re-create it with the "
                                         r"same seed"):
        other.on_load_checkpoint({**ckpt, "state_dict": dict(ckpt["state_dict"])})
    lora = classifier(seed=1, num_classes=4, finetune="linear")
    with pytest.raises(ValueError, match=r"checkpoint freezes \d+ parameters, this model \d+"):
        lora.on_load_checkpoint({**ckpt, "state_dict": dict(ckpt["state_dict"])})


def test_backbone_from_an_official_checkpoint_file(tmp_path):
    """The classifier's checkpoint path: official-format file in, the same backbone weights out, fresh head."""
    torch.manual_seed(3)
    source = create_convnextv2("atto", num_classes=1000)
    path = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": timm_to_official(source)}, path)
    model = classifier(num_classes=10, checkpoint=str(path), adapter=AdapterConfig(rank=4))
    assert not model.random_init
    theirs = source.state_dict()
    for name, layer in model.model.named_modules():
        weight = getattr(layer, "base_layer", layer)
        if name.startswith("head.fc") or not hasattr(weight, "weight") or "base_layer" in name:
            continue
        key = f"{name}.weight"
        if key in theirs:
            assert torch.equal(weight.weight, theirs[key]), key
    with torch.no_grad():  # adapters start at zero: the adapted backbone computes the source's features
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(model.model.forward_features(x), source.eval().forward_features(x), atol=1e-5)


def test_parameter_summary_is_structured():
    """The counts logged at the start of fit (issue 10 §3: not a line of the report's text)."""
    liera = classifier(adapter=AdapterConfig(method="liera", rank=8, modules_to_save=["head"]))
    assert liera.parameter_summary() == {"trainable_params": 791_108, "total_params": liera.parameter_count.total,
                                         "adapted_layers": 16, "adapter_params": 758_368}
    linear = classifier(finetune="linear")
    assert linear.parameter_summary() == {"trainable_params": 32_100, "total_params": linear.parameter_count.total}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_checkpoint_of_a_cast_model_resumes(dtype):
    """Lightning casts the module for *-true precisions before saving; the frozen fingerprint is the one built in
    float32, so the checkpoint loads into a fresh (float32) model, and its tensors arrive in the cast dtype."""
    model = classifier(seed=1, num_classes=4).to(dtype)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    assert ckpt["liera_frozen_fingerprint"]["values"].dtype == torch.float64
    same = classifier(seed=1, num_classes=4)
    same.on_load_checkpoint(ckpt)  # raised "different frozen weights" when the fingerprint was taken at save time
    same.load_state_dict(ckpt["state_dict"])
    head = same.model.head.fc.weight
    assert torch.equal(head.to(dtype), model.model.head.fc.weight)
    with pytest.raises(ValueError, match="different frozen weights"):
        classifier(seed=2, num_classes=4).on_load_checkpoint({**ckpt, "state_dict": dict(ckpt["state_dict"])})


def test_lightning_checkpoint_with_a_weight_derived_scale_reloads_to_the_same_outputs(tmp_path):
    """alpha="auto" resolves α/r = 1/mean|W| from the loaded backbone; the saved checkpoint reproduces the model."""
    import lightning

    torch.manual_seed(4)
    source = create_convnextv2("atto", num_classes=1000)
    with torch.no_grad():  # a backbone whose mean |W| is not the random init's
        for p in source.parameters():
            p.mul_(3.0)
    path = tmp_path / "backbone.pt"
    torch.save({"model": timm_to_official(source)}, path)
    model = classifier(num_classes=5, checkpoint=str(path), adapter=AdapterConfig(method="liera", rank=4))
    assert model.adapter_config.alpha == "auto"
    layers = [m for m in model.model.modules() if hasattr(m, "lora_scaling")]
    weights = [layer.base_layer.weight.detach() for layer in layers]
    expected = sum(w.numel() for w in weights) / float(sum(w.double().abs().sum() for w in weights))
    assert all(float(layer.lora_scaling["default"]) == pytest.approx(expected, rel=1e-6) for layer in layers)
    assert 0.3 < expected * 0.016 < 0.4  # a third of the random init's 1/mean|W|: the loaded weights count
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["default"].normal_(0.0, 0.05)  # "trained"
        model.model.head.fc.weight.add_(0.1)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "last.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = VTABClassifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
