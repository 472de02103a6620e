"""The places where core relies on torch internals (no public API in the supported torch range); these fail
loudly if torch moves them.

* ``bases.has_hooks`` reads ``nn.Module._forward_hooks`` / ``_forward_pre_hooks`` / ``_backward_hooks`` /
  ``_backward_pre_hooks`` (a hooked layer must run its own ``__call__``).
* ``inject.model_transaction`` snapshots and restores ``_modules`` / ``_parameters`` / ``_buffers`` /
  ``_non_persistent_buffers_set`` (putting a model back exactly after a failed operation).
* ``AdapterLayer`` overrides ``_load_from_state_dict`` (0.1.0 key names) and ``_save_to_state_dict`` (a warning
  when merged), the extension points torch's own layers (BatchNorm) use.
"""

from __future__ import annotations

import torch
from torch import nn

from liera_vision.core import AdapterConfig, apply_adapters, model_transaction
from liera_vision.core.bases import _HOOKS, has_hooks


def test_module_hook_dicts_exist_and_register_hooks():
    layer = nn.Linear(2, 2)
    assert all(isinstance(getattr(layer, name), dict) for name in _HOOKS)
    assert not has_hooks(layer)
    for register in (layer.register_forward_hook, layer.register_forward_pre_hook, layer.register_full_backward_hook,
                     layer.register_full_backward_pre_hook):
        handle = register(lambda *args: None)
        assert has_hooks(layer)
        handle.remove()
        assert not has_hooks(layer)


def test_module_containers_used_by_transactions():
    m = nn.Sequential(nn.Linear(2, 2))
    m.register_buffer("b", torch.zeros(1), persistent=False)
    assert isinstance(m._modules, dict) and isinstance(m._parameters, dict) and isinstance(m._buffers, dict)
    assert m._non_persistent_buffers_set == {"b"} and "b" not in m.state_dict()
    before = list(m.named_modules())
    try:
        with model_transaction(m):
            apply_adapters(m, AdapterConfig(rank=1, alpha=1.0, targets="all"))
            raise RuntimeError("undo")
    except RuntimeError:
        pass
    assert list(m.named_modules()) == before and m._non_persistent_buffers_set == {"b"}


def test_state_dict_extension_points_are_called():
    import warnings

    from liera_vision.core import AdapterLayer, merge_adapters
    from liera_vision.errors import LieraWarning

    model = nn.Sequential(nn.Linear(3, 3))
    apply_adapters(model, AdapterConfig(rank=1, alpha=1.0, targets="all"))
    merge_adapters(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.state_dict()
    assert any(issubclass(w.category, LieraWarning) and "are merged" in str(w.message) for w in caught)
    assert AdapterLayer._load_from_state_dict is not nn.Module._load_from_state_dict
