"""LieRA as a Hugging Face PEFT method (``pip install 'liera-vision[peft]'``).

**Import this module before loading a saved LieRA adapter with PEFT.** PEFT reads ``peft_type`` from
``adapter_config.json`` and looks it up in its own tables before any of our code runs; without
``import liera_vision.peft`` it fails with ``KeyError: 'LIERA'``.

>>> import peft, timm
>>> from liera_vision.peft import LieRAConfig
>>> model = peft.get_peft_model(timm.create_model("convnextv2_atto", num_classes=10),
...                             LieRAConfig(r=8, modules_to_save=["head"]))
>>> model.save_pretrained("liera-adapter")            # adapter_config.json + adapter_model.safetensors
>>> # later, in a fresh process:
>>> import liera_vision.peft                          # registers "LIERA" with PEFT
>>> model = peft.PeftModel.from_pretrained(timm.create_model("convnextv2_atto", num_classes=10), "liera-adapter")

The layers are core's (:class:`liera_vision.core.AdapterLayer`); this package only bridges. Conversion
between PEFT folders and liera-vision adapter files: :func:`peft_to_liera`, :func:`liera_to_peft`
(``tools/convert_adapter.py``). Details: ``docs/peft.md``.
"""

from __future__ import annotations

try:
    import peft  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("liera_vision.peft needs Hugging Face PEFT: pip install 'liera-vision[peft]' "
                      "(peft>=0.21,<0.22)") from err

from .config import LOAD_NOTE, PEFT_TYPE, LieRAConfig
from .convert import convert_adapter, liera_to_peft, peft_to_liera
from .layer import LieRALayer
from .model import LieRAModel
from .register import register_with_peft

register_with_peft()

__all__ = ["LOAD_NOTE", "PEFT_TYPE", "LieRAConfig", "LieRALayer", "LieRAModel", "convert_adapter", "liera_to_peft",
           "peft_to_liera", "register_with_peft"]
