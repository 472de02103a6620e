"""``LieRALayer``: core's :class:`~liera_vision.core.AdapterLayer` as a PEFT tuner layer.

The class adds nothing to the math: core's layer already keeps PEFT's layout (per-adapter
``ParameterDict`` / buffers named ``lora_*``, ``adapter_layer_names``, ``other_param_names``,
``active_adapter(s)``, ``merged_adapters``, ``merge(safe_merge, adapter_names)``, ``unmerge``,
``get_delta_weight``, ``enable_adapters``, ``delete_adapter``). PEFT's :class:`BaseTunerLayer`
comes second in the MRO, so it only supplies what core does not define (``get_base_layer``,
``set_requires_grad``, ``_freeze_non_trainable_peft_weights`` …).

PEFT calls ``set_adapter`` / ``merge`` / ``delete_adapter`` on *every* tuner layer of a model, also on
layers that do not carry the adapter named (a second adapter may target fewer layers); core's layer
accepts that. Two PEFT conventions differ and are kept here: ``unmerge`` on a layer that is not
merged is silent, and adapters moved to the base layer's device keep core's dtype.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..core import AdapterLayer
from ..core.delta import adapter_dtype


class LieRALayer(AdapterLayer, BaseTunerLayer):
    """A LieRA / LoRA / DoRA / PiSSA adapter layer (core's ``AdapterLayer``) that PEFT manages."""

    def unmerge(self) -> None:
        """Restore the base weight exactly; a no-op on a layer that is not merged (PEFT unmerges every layer,
        including those that did not carry the merged adapter)."""
        if self.merged:
            super().unmerge()

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Move ``adapter_name``'s tensors to the base layer's device, in core's adapter dtype (fp32 beside a
        half-precision base; PEFT's default would cast them to the base dtype)."""
        weight = self.base_layer.weight
        device = weight.device if device is None else device
        dtype = adapter_dtype(weight)
        for attr in self.tensor_names:
            container = getattr(self, attr)
            if adapter_name in container and container[adapter_name].device.type != "meta":
                tensor = container[adapter_name]
                moved = tensor.to(device=device, dtype=dtype)
                if moved is not tensor:
                    if isinstance(tensor, torch.nn.Parameter):
                        moved = torch.nn.Parameter(moved, requires_grad=tensor.requires_grad)
                    container[adapter_name] = moved
