"""The project's warning classes (standard library only, so every layer can use them).

Filter by class, never by message text::

    import warnings
    from liera_vision.errors import ZeroWeightWarning
    warnings.filterwarnings("ignore", category=ZeroWeightWarning)
"""

from __future__ import annotations


class LieraWarning(UserWarning):
    """Base class of every warning liera-vision emits."""


class ZeroWeightWarning(LieraWarning):
    """Adapted weights hold entries that are exactly zero: a Lie (multiplicative) update cannot move them."""


class RandomInitWarning(LieraWarning):
    """A backbone runs without pre-trained weights, so its accuracies say little about adapting one."""


class CheckpointWarning(LieraWarning):
    """A checkpoint loaded with tensors set aside or left unset (the message lists them)."""
