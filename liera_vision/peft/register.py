"""Make PEFT know the method ``"LIERA"``: the one place that touches PEFT's internals.

PEFT 0.21's public ``peft.utils.register_peft_method`` accepts only names of its own ``PeftType`` enum
(``ValueError: Unknown PEFT type LIERA, please add an entry to peft.utils.peft_types.PeftType``). The
route that works — and that PEFT's maintainers accept for custom methods (string ``peft_type``,
huggingface/peft PR #2635) — writes the three entries ``register_peft_method`` itself writes:
``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING``, ``PEFT_TYPE_TO_TUNER_MAPPING`` and
``PEFT_TYPE_TO_PREFIX_MAPPING``, keyed by the string ``"LIERA"``. Because these are internals, the
``peft`` extra is bounded to the tested minor version and ``tests/peft/test_registration.py`` fails
loudly when PEFT moves them.
"""

from __future__ import annotations

import warnings

from ..errors import LieraWarning

TABLES = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")
TESTED = ((0, 21),)  # PEFT minor versions this registration is tested with


def register_with_peft() -> None:
    """Register ``LieRAConfig`` / ``LieRAModel`` with PEFT under the peft_type ``"LIERA"`` (idempotent).

    Raises:
        ImportError: this PEFT has no such mapping tables (its internals moved; install ``peft>=0.21,<0.22``).
    """
    import peft
    from peft import mapping

    from .config import PEFT_TYPE, LieRAConfig
    from .model import LieRAModel

    missing = [t for t in TABLES if not isinstance(getattr(mapping, t, None), dict)]
    if missing:
        raise ImportError(f"peft {peft.__version__} has no peft.mapping.{', '.join(missing)}: liera_vision.peft "
                          "registers LieRA there and was tested with peft 0.21 (pip install 'peft>=0.21,<0.22')")
    version = tuple(int(part) for part in peft.__version__.split(".")[:2] if part.isdigit())
    if version not in TESTED:
        warnings.warn(f"liera_vision.peft is tested with peft 0.21, this is peft {peft.__version__}: registering LieRA "
                      "through PEFT's mapping tables may not work", LieraWarning, stacklevel=3)
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = LieRAConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = LieRAModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = LieRAModel.prefix
