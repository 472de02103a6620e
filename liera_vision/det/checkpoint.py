"""Checkpoint files under torch >= 2.6: mmengine's own checkpoints resume, foreign files stay pickle-free.

mmengine 0.10.7 calls ``torch.load(filename, map_location)`` without ``weights_only``; torch >= 2.6
then refuses the few non-tensor objects mmengine itself writes into a training checkpoint (the
message hub's ``HistoryBuffer`` with its numpy arrays), so ``--resume`` breaks. Importing
``liera_vision.det`` replaces mmengine's loader for local files with one that still reads with
``weights_only=True`` and allow-lists exactly those globals, only while it reads: a pickle that
would construct anything else (run code) is still refused, for resumed and pretrained files alike.
On torch < 2.5 (no allow-list API; the docker image's torch 2.1) the same allow-list restricts the
standard unpickler instead.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import types
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

try:  # numpy >= 2 (numpy 1.26 pickles as numpy.core.multiarray; both names are accepted below)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

HISTORY_BUFFER_DEFAULT_STATISTICS = ("min", "max", "current", "mean")


def history_buffer_getattr(owner, name: str):
    """``getattr`` limited to what ``HistoryBuffer.__getstate__`` pickles: its own statistics methods."""
    allowed = set(HISTORY_BUFFER_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not part of an mmengine checkpoint")


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
    *[(fn, f"{module}.{fn.__name__}") for fn in (_multiarray._reconstruct, _multiarray.scalar)
      for module in ("numpy.core.multiarray", "numpy._core.multiarray")],
]


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's ``load_from_local``, reading only tensors, builtins and mmengine's own globals."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename} can not be found")
    load = _load_weights_only if hasattr(torch.serialization, "safe_globals") else _load_restricted
    try:
        return load(filename, map_location)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{filename}: refused to unpickle: {str(err).splitlines()[0]} — the file holds an "
                         "object that is neither a tensor nor part of an mmengine checkpoint; loading it "
                         "could run code. Convert it to a plain state dict (or safetensors) first.") from err


def _load_weights_only(filename: str, map_location=None):
    """torch >= 2.5: torch's weights-only unpickler, the allow-list in force only while this file is read."""
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
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


CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)


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
