"""mmengine checkpoints under torch >= 2.6: read by the plugin's runner and loader only, never code, never globally."""

from __future__ import annotations

import pickle
import pickletools
import uuid

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader

from liera_vision.det import CheckedRunner, checkpoint, load_local_checkpoint, mmengine_checkpoint_globals
from liera_vision.det.checkpoint import HISTORY_BUFFER_STATISTICS, history_buffer_getattr, numpy_pickle_globals

# torch >= 2.5: torch's weights-only unpickler + allow-list; older torch (docker): restricted find_class
LOADERS = pytest.mark.parametrize(
    "loader", [checkpoint._load_weights_only, checkpoint._load_restricted][
        0 if hasattr(torch.serialization, "safe_globals") else 1:], ids=lambda fn: fn.__name__)


def _mmengine_like_checkpoint(path, state_dict=None):
    """What mmengine's Runner.save_checkpoint writes: meta, state_dict, message hub, optimizer."""
    hub = MessageHub(f"ckpt-test-{uuid.uuid4().hex}")
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
                "state_dict": state_dict if state_dict is not None else {"w": weight.detach()},
                "message_hub": hub.state_dict(), "optimizer": optimizer.state_dict(),
                "param_schedulers": [{"last_step": 3, "by_epoch": False}]}, path)
    return hub


def test_importing_the_plugin_changes_no_loader(tmp_path):
    """mmengine's own loader keeps torch's default (weights_only=True refuses HistoryBuffer); the allow-list
    applies only inside mmengine_checkpoint_globals(), i.e. inside the plugin's runner and loader."""
    path = tmp_path / "epoch_1.pth"
    _mmengine_like_checkpoint(path)
    safe = getattr(torch.serialization, "get_safe_globals", list)()
    assert not any(g in safe for g in checkpoint.MMENGINE_CHECKPOINT_GLOBALS)
    if checkpoint.TORCH_LOAD_WEIGHTS_ONLY:  # torch >= 2.6
        with pytest.raises(pickle.UnpicklingError):
            CheckpointLoader.load_checkpoint(str(path), map_location="cpu")  # mmengine's entry point, unchanged
    else:  # older torch unpickles anything by default, and mmengine with it: unchanged as well
        assert "message_hub" in CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    with mmengine_checkpoint_globals():
        ckpt = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    with pytest.raises(pickle.UnpicklingError):  # the allow-list is gone again
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


def _pickled_globals(obj) -> set[str]:
    """The 'module name' globals a protocol-2 pickle (torch.save's default) of ``obj`` references."""
    return {arg.replace(" ", ".").replace("__builtin__.", "builtins.")  # protocol 2 writes Python 2's name
            for op, arg, _ in pickletools.genops(pickle.dumps(obj, protocol=2)) if op.name == "GLOBAL"}


def test_history_buffer_pickles_only_the_pinned_statistics():
    """Pins mmengine: a pickled HistoryBuffer references getattr(HistoryBuffer, name) for its registered
    statistics, which are the four HistoryBuffer.__init__ registers. Fails when mmengine changes either."""
    buffer = HistoryBuffer([1.0, 2.0], [1, 1])
    state = buffer.__getstate__()
    assert set(state["statistics_methods"]) >= set(HISTORY_BUFFER_STATISTICS)
    defaults = {name: fn for name, fn in state["statistics_methods"].items() if name in HISTORY_BUFFER_STATISTICS}
    assert all(fn is getattr(HistoryBuffer, name) for name, fn in defaults.items())
    assert "builtins.getattr" in _pickled_globals(buffer)
    assert history_buffer_getattr(HistoryBuffer, "mean") is HistoryBuffer.mean


def test_numpy_globals_are_the_ones_numpy_pickles_reference():
    """Pins numpy: the functions an array and a scalar pickle through are allow-listed under their names."""
    allowed = {name for _, name in numpy_pickle_globals()}
    referenced = _pickled_globals(np.arange(3.0)) | _pickled_globals(np.float64(2.5)) | _pickled_globals(np.int64(2))
    numpy_functions = {n for n in referenced if ".multiarray." in n}
    assert numpy_functions and numpy_functions <= allowed
    assert referenced - numpy_functions <= {"numpy.ndarray", "numpy.dtype", "_codecs.encode"}  # allow-listed classes
    assert {np.ndarray, np.dtype} <= set(checkpoint.MMENGINE_CHECKPOINT_GLOBALS)
    assert {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"} == allowed


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
    for owner, name in [(HistoryBuffer, "__init__"), (HistoryBuffer, "register_statistics"), (np.ndarray, "tofile"),
                        (torch, "load")]:
        with pytest.raises(pickle.UnpicklingError, match="is not part of an mmengine checkpoint"):
            history_buffer_getattr(owner, name)
    path = tmp_path / "sneaky.pth"
    torch.save({"x": _Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError):
        loader(str(path))


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*absent\.pth does not exist"):
        load_local_checkpoint(tmp_path / "absent.pth")
    for name, content in [("empty.pth", b""), ("notes.pth", b"not a checkpoint\n")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}"):
            load_local_checkpoint(tmp_path / name)


# --- CheckedRunner ----------------------------------------------------------------------------------
class _Toy(BaseModel):
    def __init__(self, out: int = 2):
        super().__init__()
        self.fc = torch.nn.Linear(3, out)

    def forward(self, inputs=None, data_samples=None, mode="tensor"):
        return self.fc(inputs)


def _runner(tmp_path, out: int = 2) -> CheckedRunner:
    return CheckedRunner(model=_Toy(out), work_dir=str(tmp_path / "work"), experiment_name=f"toy-{uuid.uuid4().hex}",
                         default_scope="mmdet")


def test_runner_reads_mmengine_checkpoints(tmp_path):
    runner = _runner(tmp_path)
    weights = {k: torch.full_like(v, 0.5) for k, v in runner.model.state_dict().items()}
    path = tmp_path / "epoch_1.pth"
    _mmengine_like_checkpoint(path, state_dict=weights)
    ckpt = runner.load_checkpoint(str(path))  # HistoryBuffer inside: refused by torch's default
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    assert torch.equal(runner.model.fc.weight, torch.full((2, 3), 0.5))
    with pytest.raises(pickle.UnpicklingError):  # outside the runner's read, torch's default again
        torch.load(path, weights_only=True)


def test_runner_refuses_code_and_non_checkpoints(tmp_path):
    runner = _runner(tmp_path)
    evil, notes = tmp_path / "evil.pth", tmp_path / "notes.pth"
    torch.save({"state_dict": {}, "meta": _Payload()}, evil)
    notes.write_text("hello")
    # torch >= 2.4 names the refused globals ("cannot load"); older torch's restricted unpickler says "refused"
    refused = r"evil\.pth: (cannot load this checkpoint .*tensors, builtins|refused to unpickle)"
    with pytest.raises(ValueError, match=refused):
        runner.load_checkpoint(str(evil))
    with pytest.raises(ValueError, match=r"notes\.pth: (cannot load this checkpoint|refused to unpickle)"):
        runner.load_checkpoint(str(notes))


def test_runner_on_old_torch_reads_local_files_restricted_first(tmp_path, monkeypatch):
    """torch < 2.6 would unpickle anything: the runner reads a local file with the allow-list first."""
    monkeypatch.setattr(checkpoint, "TORCH_LOAD_WEIGHTS_ONLY", False)
    runner = _runner(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Payload()}, evil)
    with pytest.raises(ValueError, match=r"evil\.pth: refused to unpickle"):
        runner.load_checkpoint(str(evil))
    good = tmp_path / "epoch_1.pth"
    _mmengine_like_checkpoint(good, state_dict={k: torch.ones_like(v) for k, v in runner.model.state_dict().items()})
    runner.load_checkpoint(str(good))
    assert torch.equal(runner.model.fc.bias, torch.ones(2))


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    """mmengine only warns (and resumes random weights); the checked runner names the mismatch first."""
    runner = _runner(tmp_path, out=2)
    other = tmp_path / "other.pth"
    _mmengine_like_checkpoint(other, state_dict={"fc.weight": torch.zeros(5, 3), "fc.bias": torch.zeros(5)})
    before = runner.model.fc.weight.detach().clone()
    with pytest.raises(ValueError, match=r"other\.pth does not match .*2 tensors differ in shape .*fc\.bias \(5,\) vs "
                                         r"\(2,\)"):
        runner.resume(str(other))
    assert torch.equal(runner.model.fc.weight, before)  # refused before any weight was copied
    extra = tmp_path / "extra.pth"
    _mmengine_like_checkpoint(extra, state_dict={"fc.weight": torch.zeros(2, 3), "head.w": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"extra\.pth does not match .*1 missing keys \['fc\.bias'\], "
                                         r"1 unexpected keys \['head\.w'\]"):
        runner.resume(str(extra))
    # fine-tuning from another checkpoint (load_from without resume) stays mmengine's non-strict load
    runner.load_checkpoint(str(extra))
    assert torch.equal(runner.model.fc.weight, torch.zeros(2, 3))
