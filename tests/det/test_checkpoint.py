"""mmengine checkpoints under torch >= 2.6: its own objects load with weights_only=True, nothing else does."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import CheckpointLoader

from liera_vision.det import checkpoint, load_local_checkpoint
from liera_vision.det.checkpoint import history_buffer_getattr

# torch >= 2.5: torch's weights-only unpickler + allow-list; older torch (docker): restricted find_class
LOADERS = pytest.mark.parametrize("loader", [checkpoint._load_weights_only, checkpoint._load_restricted],
                                  ids=["weights_only", "restricted"])


def _mmengine_like_checkpoint(path):
    """What mmengine's Runner.save_checkpoint writes: meta, state_dict, message hub, optimizer."""
    hub = MessageHub(f"ckpt-test-{path.name}")
    for step, loss in enumerate([1.5, 1.25, 0.75]):
        hub.update_scalar("train/loss", loss)
        hub.update_scalar("train/lr", np.float64(1e-4 * (step + 1)))
    hub.update_info("iter", 3)
    hub.update_info("best_score", np.float64(0.42))
    weight = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    torch.save({"meta": {"epoch": 1, "iter": 3, "dataset_meta": {"classes": ("a", "b"), "palette": [(1, 2, 3)]}},
                "state_dict": {"w": weight.detach()}, "message_hub": hub.state_dict(),
                "optimizer": optimizer.state_dict(), "param_schedulers": [{"last_step": 3, "by_epoch": False}]}, path)
    return hub


def test_torch_default_refuses_an_mmengine_checkpoint(tmp_path):
    """The trap: torch >= 2.6 loads with weights_only=True, mmengine 0.10.7 does not say otherwise."""
    path = tmp_path / "epoch_1.pth"
    _mmengine_like_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")  # mmengine's entry point (resume)
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    with pytest.raises(pickle.UnpicklingError):  # the allow-list applies only while mmengine's loader reads
        torch.load(path, weights_only=True)


@LOADERS
def test_mmengine_checkpoint_round_trips(loader, tmp_path):
    path = tmp_path / "epoch_1.pth"
    hub = _mmengine_like_checkpoint(path)
    ckpt = loader(str(path), "cpu")
    restored = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(restored, HistoryBuffer)
    assert restored.mean() == pytest.approx(hub.get_scalar("train/loss").mean())
    assert ckpt["message_hub"]["runtime_info"]["best_score"] == pytest.approx(0.42)
    assert ckpt["optimizer"]["state"][0]["step"] == 1 and ckpt["meta"]["dataset_meta"]["classes"] == ("a", "b")
    assert ckpt["state_dict"]["w"].shape == (3, 2)


class _Payload:
    def __reduce__(self):
        import subprocess

        return subprocess.call, (["touch", "/tmp/liera-vision-pwned"],)


@LOADERS
def test_code_in_a_pickle_is_refused(loader, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        loader(str(path))


def test_refusal_names_the_file(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth: refused to unpickle"):
        load_local_checkpoint(str(path))


class _Sneaky:  # pickles as getattr(numpy.ndarray, 'tofile')
    def __reduce__(self):
        return getattr, (np.ndarray, "tofile")


@LOADERS
def test_getattr_is_limited_to_history_buffer_statistics(loader, tmp_path):
    assert history_buffer_getattr(HistoryBuffer, "mean") is HistoryBuffer.mean
    for owner, name in [(HistoryBuffer, "__init__"), (np.ndarray, "tofile"), (torch, "load")]:
        with pytest.raises(pickle.UnpicklingError, match="is not part of an mmengine checkpoint"):
            history_buffer_getattr(owner, name)
    path = tmp_path / "sneaky.pth"
    torch.save({"x": _Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError):
        loader(str(path))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*absent\.pth can not be found"):
        CheckpointLoader.load_checkpoint(str(tmp_path / "absent.pth"))
