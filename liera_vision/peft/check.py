"""Refuse corrupted LieRA adapter tensors before PEFT loads them.

core's reader (:func:`liera_vision.core.read_adapter_file`) refuses adapter files whose tensors hold NaN / inf
or whose ``lora_scaling`` (``alpha / r``) is not positive; PEFT itself loads any tensor it is given. The same
rule is applied here to what PEFT loads, at two points:

* :meth:`LieRAConfig.from_pretrained <liera_vision.peft.LieRAConfig.from_pretrained>` checks a local folder's
  ``adapter_model.safetensors`` as soon as PEFT reads the folder's config, i.e. in
  ``PeftModel.from_pretrained`` / ``PeftModel.load_adapter`` *before* the adapter is injected into the model
  (so the model is left as it was);
* :meth:`LieRAModel._remap_adapter_state_dict_for_load <liera_vision.peft.LieRAModel>` checks every state dict
  PEFT's ``set_peft_model_state_dict`` loads (Hub downloads, pickled ``adapter_model.bin``, a config passed to
  ``from_pretrained`` explicitly) before ``load_state_dict`` copies anything.

The rule and its messages are core's: :func:`liera_vision.core.io.check_adapter_tensors`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.io import check_adapter_tensors


def check_adapter_folder(folder: str | os.PathLike) -> None:
    """Check the ``adapter_model.safetensors`` of a local PEFT adapter folder (nothing to check when there is none:
    a Hub id, or a folder PEFT will refuse by itself).

    Raises:
        ValueError: a tensor at fault, or a file that is not safetensors (naming the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        return
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err})") from None
    check_adapter_tensors(tensors, path)
