"""Checkpoint files of the plugin's runs: mmengine's own checkpoints under torch >= 2.6, checked, pickle-free.

mmengine 0.10.7 reads checkpoints with ``torch.load(filename, map_location)``; since torch 2.6 that
means ``weights_only=True``, which refuses the few non-tensor objects mmengine itself writes into a
training checkpoint (the message hub's ``HistoryBuffer`` with its numpy arrays), so ``--resume``
breaks. The fix is scoped to the plugin's runs: the configs select :class:`CheckedRunner`
(``runner_type='CheckedRunner'``), whose checkpoint reads allow-list exactly those objects
(:func:`mmengine_checkpoint_globals`) while they read. Importing ``liera_vision.det`` changes no
loader: other code in the process keeps mmengine's and torch's behaviour.

:func:`load_local_checkpoint` is the plugin's own weights-only reader (``tools/merge_backbone.py``);
on torch < 2.5 (no allow-list API; the docker image's torch 2.1) it restricts Python's unpickler to
the same allow-list.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import pickle
import re
import types
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from torch import nn

# torch >= 2.6 reads with weights_only=True unless told otherwise; older torch unpickles anything
TORCH_LOAD_WEIGHTS_ONLY = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 6)

# The statistics HistoryBuffer.__init__ registers (mmengine/logging/history_buffer.py); a pickled
# HistoryBuffer stores them as getattr(HistoryBuffer, name). tests/det/test_checkpoint.py pins this.
HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")


def history_buffer_getattr(owner, name: str):
    """``getattr`` limited to what a pickled ``HistoryBuffer`` references: its own statistics methods."""
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not part of an mmengine checkpoint")


def numpy_pickle_globals() -> list[tuple[object, str]]:
    """The functions numpy's pickles call to rebuild arrays and scalars, under both of their names.

    Taken from numpy's public pickle protocol (``ndarray.__reduce__`` / ``generic.__reduce__``)
    rather than from a private module; numpy >= 2 writes ``numpy._core.multiarray.*``, numpy 1.x
    ``numpy.core.multiarray.*``, and either file must load.
    """
    functions = (np.ndarray((0,)).__reduce__()[0], np.float64(0).__reduce__()[0])
    return [(fn, f"{module}.{fn.__name__}") for fn in functions
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")]


# What mmengine 0.10.7 writes besides tensors and builtins: MessageHub.state_dict() holds
# HistoryBuffer objects, whose state is numpy arrays plus getattr(HistoryBuffer, 'min' | 'max' |
# 'current' | 'mean'), and numpy scalars.
MMENGINE_CHECKPOINT_GLOBALS = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    *sorted({type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                                         np.uint8, np.bool_)}, key=str),
    (history_buffer_getattr, "builtins.getattr"),
    *numpy_pickle_globals(),
]


@contextlib.contextmanager
def mmengine_checkpoint_globals():
    """While active, ``torch.load(weights_only=True)`` also accepts the objects mmengine writes.

    torch >= 2.5 only (``torch.serialization.safe_globals``); on older torch ``torch.load`` does not
    default to ``weights_only=True``, mmengine's loads work as they are and this does nothing.
    """
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            yield
    else:  # pragma: no cover - torch < 2.5
        yield


def load_local_checkpoint(filename: str | os.PathLike, map_location=None):
    """Read a local checkpoint: tensors, builtins and mmengine's own objects only, never code.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that
    is not a readable checkpoint or would unpickle anything else.
    """
    filename = os.path.expanduser(str(filename))
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    load = _load_weights_only if hasattr(torch.serialization, "safe_globals") else _load_restricted
    try:
        return load(filename, map_location)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{filename}: refused to unpickle: {str(err).splitlines()[0]} — the file holds an "
                         "object that is neither a tensor nor part of an mmengine checkpoint; loading it "
                         "could run code. Convert it to a plain state dict (or safetensors) first.") from err
    except OSError:
        raise
    except Exception as err:  # torch's unpicklers fail on other files with EOFError, KeyError, RuntimeError, ...
        raise ValueError(f"{filename} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                         f"{_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_weights_only(filename: str, map_location=None):
    """torch >= 2.5: torch's weights-only unpickler, the allow-list in force only while this file is read."""
    with mmengine_checkpoint_globals():
        return torch.load(filename, map_location=map_location, weights_only=True)


def _global_name(entry) -> tuple[str, object]:
    return (entry[1], entry[0]) if isinstance(entry, tuple) else (f"{entry.__module__}.{entry.__qualname__}", entry)


# torch < 2.5 (e.g. the docker image's torch 2.1) has no allow-list for its weights-only unpickler:
# there the standard unpickler runs with find_class restricted to what torch's own weights-only
# loader accepts for checkpoints, plus the mmengine globals above (Python's "restricting globals").
RESTRICTED_GLOBALS = dict(
    [_global_name(e) for e in MMENGINE_CHECKPOINT_GLOBALS],
    **{"collections.OrderedDict": collections.OrderedDict, "collections.Counter": collections.Counter,
       "_codecs.encode": codecs.encode, "torch.Size": torch.Size, "torch.device": torch.device,
       "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
       "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter},
)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        full = f"{'builtins' if module == '__builtin__' else module}.{name}"
        if full in RESTRICTED_GLOBALS:
            return RESTRICTED_GLOBALS[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global '{full}' is not allowed")


_restricted_pickle = types.ModuleType("liera_vision_restricted_pickle")
_restricted_pickle.Unpickler = RestrictedUnpickler
_restricted_pickle.load = lambda fh, **kwargs: RestrictedUnpickler(fh, **kwargs).load()


def _load_restricted(filename: str, map_location=None):
    # torch wraps pickle_module.Unpickler (storages are resolved by torch, everything else by find_class)
    return torch.load(filename, map_location=map_location, pickle_module=_restricted_pickle, weights_only=False)


def check_state_dict(model: nn.Module, state: dict, source: str, target: str) -> dict:
    """The state dict in ``state``; ``ValueError`` unless it holds exactly ``model``'s tensors with their shapes.

    ``state`` is a checkpoint (its ``'state_dict'`` is used when present) or a state dict; a
    ``module.`` prefix (a DDP-wrapped model's) is ignored. ``source`` / ``target`` name the file
    and the config in the message.
    """
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds no state dict (got {type(state).__name__}); expected an mmengine "
                         "checkpoint {'meta', 'state_dict', ...}")
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not match {target}: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:3]} (was it trained with this config?)")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise ValueError(f"{source} does not match {target}: {len(shapes)} tensors differ in shape (file vs model), "
                         f"e.g. {shapes[:3]} (was it trained with this config?)")
    return state


@RUNNERS.register_module()
class CheckedRunner(Runner):
    """mmengine's ``Runner`` that reads its own checkpoints under torch >= 2.6 and refuses ones that do not fit.

    - Checkpoints are read with :func:`mmengine_checkpoint_globals` in force (mmengine's
      ``HistoryBuffer`` and numpy objects allowed, nothing else), so ``resume`` works under torch's
      ``weights_only=True`` default; on torch < 2.6, whose default unpickles anything, a local file
      is first read by :func:`load_local_checkpoint` (refusing code). A file torch cannot read is a
      ``ValueError`` naming it.
    - ``resume``, ``test`` and ``val`` load a checkpoint that must hold exactly the model's tensors
      (mmengine only logs a warning and carries on with random weights); ``load_from`` for
      fine-tuning stays mmengine's non-strict load.

    Configs select it with ``runner_type='CheckedRunner'``; MMDetection's ``tools/train.py`` and
    ``tools/test.py`` build it from there (``RUNNERS.build``), as do ``tools/train_coco.py`` /
    ``test_coco.py``.
    """

    _exact_load = False

    @contextlib.contextmanager
    def _exact(self):
        previous, self._exact_load = self._exact_load, True
        try:
            yield
        finally:
            self._exact_load = previous

    def resume(self, *args, **kwargs) -> None:
        with self._exact():
            return super().resume(*args, **kwargs)

    def test(self) -> dict:
        with self._exact():
            return super().test()

    def val(self) -> dict:
        with self._exact():
            return super().val()

    def load_checkpoint(self, filename: str, *args, **kwargs):
        self._loading, self._read = filename, False
        if not TORCH_LOAD_WEIGHTS_ONLY and os.path.isfile(os.path.expanduser(str(filename))):
            load_local_checkpoint(filename, map_location="cpu")  # torch < 2.6: refuse code before mmengine unpickles
        with mmengine_checkpoint_globals():
            try:
                return super().load_checkpoint(filename, *args, **kwargs)
            except OSError:  # a missing file, a failed download: mmengine's message names it
                raise
            except Exception as err:
                if self._read:  # the file was read: not a reading error
                    raise
                hint = ("; mmengine checkpoints hold tensors, builtins, numpy arrays and HistoryBuffer objects only"
                        if isinstance(err, pickle.UnpicklingError) else "")
                raise ValueError(f"{filename}: cannot load this checkpoint ({type(err).__name__}: "
                                 f"{_first_line(err)}){hint}") from err

    def call_hook(self, fn_name: str, **kwargs) -> None:
        if fn_name == "after_load_checkpoint":  # mmengine calls it once the file is read
            self._read = True
        if fn_name == "after_load_checkpoint" and self._exact_load:  # before any weight is copied
            model = self.model.module if is_model_wrapper(self.model) else self.model
            config = getattr(self.cfg, "filename", None) or "the config's model"
            check_state_dict(model, kwargs["checkpoint"], str(getattr(self, "_loading", "the checkpoint")), config)
        super().call_hook(fn_name, **kwargs)


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A local checkpoint path for ``spec``: a path, or an http(s) URL cached under ``$TORCH_HOME/hub/checkpoints``.

    A URL is downloaded once (by local rank 0; other ranks wait) and reused afterwards.
    """
    spec = str(spec)
    if not spec.startswith(("http://", "https://")):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint {spec} does not exist (init_cfg.checkpoint: a local "
                                    "official / FCMAE / timm file or an http(s) URL; see docs/coco.md)")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(spec).path).name
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec, str(path), progress=True)  # writes a temp file, then renames
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not path.is_file():
        raise FileNotFoundError(f"{spec} was not downloaded to {path}")
    return path
