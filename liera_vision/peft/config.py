"""``LieRAConfig``: a PEFT config carrying the fields of :class:`liera_vision.core.AdapterConfig` that PEFT can use.

Field by field (PEFT's name → core's):

======================  ==========================  ==============================================
``LieRAConfig``         ``AdapterConfig``           meaning
======================  ==========================  ==============================================
``r``                   ``rank``                    rank of ``ΔW = (alpha / r) · reshape(B @ A)``
``alpha``               ``alpha``                   a number, ``"auto"`` / ``"auto-kind"`` / ``"auto-layer"``
                                                    (Lie compositions: ``alpha / r = 1 / mean|W|``) or
                                                    ``None`` (``"auto"`` for Lie, ``r`` for additive)
``composition``         ``composition``             ``"taylor"`` (default) | ``"exp"`` | ``"additive"`` (LoRA)
``init``                ``init``                    ``"lora"`` | ``"pissa"``
``post``                ``post``                    ``None`` | ``"dora"``
``factorization``       ``factorization``           ``"kernel"`` (the paper's) | ``"flat"``
``dropout``             ``dropout``                 rank dropout (kept components rescaled)
``zero_weight_fallback``  ``zero_weight_fallback``  exactly-zero weights train additively
``rank_pattern``        ``rank_pattern``            per-layer rank by regex (PEFT's matching rule)
``alpha_pattern``       ``alpha_pattern``           per-layer alpha by regex
``target_modules``      ``targets``                 PEFT's rule (a list of names / suffixes, or one
                                                    regex matched against the full name), or a preset
                                                    of core: ``None`` / ``"spatial"`` (convs larger than
                                                    1×1, the paper's choice), ``"pointwise"``, ``"all"``
``exclude_modules``     ``exclude``                 PEFT's rule
``modules_to_save``     ``modules_to_save``         PEFT's rule (handled by PEFT's ``ModulesToSaveWrapper``)
======================  ==========================  ==============================================

``note`` is not configuration: it is written into every saved ``adapter_config.json`` so that whoever
opens the file learns that loading needs ``import liera_vision.peft`` first (PEFT looks the method up
before any of our code runs, and fails with ``KeyError: 'LIERA'`` otherwise).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from peft import PeftConfig

from ..core import AdapterConfig
from ..core.config import TARGET_PRESETS

PEFT_TYPE = "LIERA"
LOAD_NOTE = ("A LieRA adapter from liera-vision (https://arxiv.org/abs/2504.00851). PEFT does not know this method "
             "by itself: `pip install 'liera-vision[peft]'` and run `import liera_vision.peft` before "
             "PeftModel.from_pretrained / PeftConfig.from_pretrained; without it PEFT fails with KeyError: 'LIERA'. "
             "`python tools/convert_adapter.py DIR adapter.safetensors` converts it to a liera-vision adapter file.")
# LieRAConfig field -> AdapterConfig field, for the fields whose meaning is the same in both
CORE_FIELDS = {"r": "rank", "alpha": "alpha", "composition": "composition", "init": "init", "post": "post",
               "factorization": "factorization", "dropout": "dropout", "rank_pattern": "rank_pattern",
               "alpha_pattern": "alpha_pattern", "zero_weight_fallback": "zero_weight_fallback"}


def exact_pattern(names: list[str]) -> str:
    """A ``target_modules`` regex that PEFT (``re.fullmatch`` on the full module name) matches against exactly
    ``names`` — unlike a list, whose entries PEFT also matches as dotted suffixes (``"0"`` would match
    ``"1.parametrizations.weight.0"``)."""
    return "|".join(re.escape(name) for name in names)


@dataclass
class LieRAConfig(PeftConfig):
    """Configuration of LieRA adapters for :func:`peft.get_peft_model` (see the module docstring for the fields).

    >>> import liera_vision.peft                    # registers "LIERA" with PEFT
    >>> from liera_vision.peft import LieRAConfig
    >>> model = peft.get_peft_model(timm_model, LieRAConfig(r=8, modules_to_save=["head"]))

    Raises:
        ValueError: a field outside its accepted values, naming the field.
    """

    r: int = field(default=8, metadata={"help": "rank of the low-rank factors"})
    alpha: float | str | None = field(
        default=None, metadata={"help": "alpha (alpha / r scales ΔW), or 'auto' / 'auto-kind' / 'auto-layer': "
                                        "alpha / r = 1 / mean|W| for Lie compositions; None: 'auto' for Lie, r for "
                                        "additive"})
    composition: str | None = field(default=None, metadata={"help": "'taylor' (default) | 'exp' | 'additive'"})
    init: str = field(default="lora", metadata={"help": "'lora' | 'pissa'"})
    post: str | None = field(default=None, metadata={"help": "None | 'dora'"})
    factorization: str = field(default="kernel", metadata={"help": "'kernel' (the paper's) | 'flat'"})
    dropout: float = field(default=0.0, metadata={"help": "rank dropout probability"})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "PEFT's rule (names / suffixes, or one regex), or a preset: None / 'spatial' "
                                        "(convs larger than 1x1), 'pointwise', 'all'"})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "PEFT's rule"})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules trained in full and saved with the adapter (e.g. ['head'])"})
    rank_pattern: dict = field(default_factory=dict, metadata={"help": "regex -> rank"})
    alpha_pattern: dict = field(default_factory=dict, metadata={"help": "regex -> alpha"})
    zero_weight_fallback: bool = field(default=False, metadata={"help": "exactly-zero weights train additively"})
    note: str = field(default=LOAD_NOTE, metadata={"help": "how to load this adapter (always rewritten)"})
    liera_vision_version: str | None = field(default=None, metadata={"help": "version that wrote the config"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self.note = LOAD_NOTE
        if self.liera_vision_version is None:
            from .. import __version__

            self.liera_vision_version = __version__
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set)):
                if not all(isinstance(v, str) for v in value):
                    raise ValueError(f"LieRAConfig.{name} must be a string or a list of strings, got {value!r}")
                setattr(self, name, value if isinstance(value, set) else list(value))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"LieRAConfig.{name} must be a string or a list of strings, got {value!r}")
            elif isinstance(value, str):  # PEFT matches a string as one regex (re.fullmatch on the full name)
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(f"LieRAConfig.{name}: {value!r} is not a valid regex ({err}); a string is "
                                     "matched as one regex against the full module name, a list as names / "
                                     "dotted suffixes") from None
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) for m in self.modules_to_save):
                raise ValueError(f"LieRAConfig.modules_to_save must be a list of module names, got "
                                 f"{self.modules_to_save!r}")
            self.modules_to_save = list(self.modules_to_save)
        core = self.to_adapter_config()  # validates every core field
        for ours, theirs in CORE_FIELDS.items():  # the resolved values (alpha is never None afterwards)
            setattr(self, ours, getattr(core, theirs))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs) -> LieRAConfig:
        """PEFT's ``from_pretrained``; a local folder's ``adapter_model.safetensors`` is checked too (core's rule:
        finite tensors, positive ``lora_scaling``). PEFT reads the config first in ``PeftModel.from_pretrained`` /
        ``load_adapter``, so a corrupted adapter is refused before anything is injected into the model.

        Raises:
            ValueError: an invalid field (naming it), or a corrupted tensor (naming the file and the tensor).
        """
        from .check import check_adapter_folder

        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(pretrained_model_name_or_path, subfolder) if subfolder else pretrained_model_name_or_path
        if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
            check_adapter_folder(folder)
        return config

    @property
    def target_preset(self) -> str | None:
        """The core preset ``target_modules`` names (``None`` counts as ``"spatial"``), or ``None`` for PEFT's rule."""
        if self.target_modules is None:
            return "spatial"
        return self.target_modules if self.target_modules in TARGET_PRESETS else None

    def to_adapter_config(self, targets: str | list[str] = "spatial", modules_to_save: list[str] = ()) -> AdapterConfig:
        """The equivalent :class:`~liera_vision.core.AdapterConfig` (``targets`` / ``modules_to_save`` as given:
        PEFT selects the layers itself, by its own matching rule).

        Raises:
            ValueError: naming the ``LieRAConfig`` field at fault.
        """
        try:
            return AdapterConfig(targets=targets, modules_to_save=list(modules_to_save),
                                 **{theirs: getattr(self, ours) for ours, theirs in CORE_FIELDS.items()})
        except ValueError as err:
            message = str(err).replace("AdapterConfig.rank_pattern", "LieRAConfig.rank_pattern")
            message = message.replace("AdapterConfig.rank", "LieRAConfig.r").replace("AdapterConfig", "LieRAConfig")
            raise ValueError(message) from None

    @classmethod
    def from_adapter_config(cls, config: AdapterConfig, **peft_fields) -> LieRAConfig:
        """A ``LieRAConfig`` with the method fields of ``config``; ``peft_fields`` set the others
        (``target_modules``, ``modules_to_save``, ``base_model_name_or_path`` …)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(peft_fields) - names)
        if unknown:
            raise ValueError(f"unknown LieRAConfig field(s) {unknown}")
        return cls(**{ours: getattr(config, theirs) for ours, theirs in CORE_FIELDS.items()}, **peft_fields)
