"""AdapterConfig: what to adapt and how, on three independent axes. Round-trips through dict / JSON / YAML.

The axes (each a small registry; adding an entry there makes it valid here):

============  ======================================  =====================================
axis          field                                   registry
============  ======================================  =====================================
how ΔW starts ``init``: ``lora`` | ``pissa``           :data:`liera_vision.core.delta.INITS`
how ΔW meets W ``composition``: ``additive`` |          :data:`liera_vision.core.compose.COMPOSITIONS`
              ``taylor`` | ``exp``
what follows  ``post``: ``None`` | ``dora``            :data:`liera_vision.core.compose.POST_STEPS`
============  ======================================  =====================================

LoRA is ``composition="additive"``; LieRA (arXiv 2504.00851, §3) is ``"taylor"`` (``W + W ⊙ ΔW``,
the paper's "w/ TA") or ``"exp"`` (``W ⊙ exp(ΔW)``). PiSSA and DoRA combine freely with both.
``method`` and ``variant`` — the fields of liera-vision 0.1.0 — stay accepted as aliases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

from .compose import COMPOSITIONS, POST_STEPS
from .delta import FACTORIZATIONS, INITS
from .scale import SCALE_RULES

TARGET_PRESETS = ("spatial", "pointwise", "all")
METHODS = {"liera": "taylor", "lora": "additive"}  # alias -> the composition it stands for
VARIANTS = {"dora": ("post", "dora", None), "pissa": ("init", "pissa", "lora")}  # alias -> (axis, value, default)
# alpha=None resolves to this for Lie compositions: alpha / rank = 1 / mean|W| of the adapted weights,
# measured in docs/benchmarks.md (part 5, "LieRA's scale": one global value did as well as one per layer kind and
# beat a fixed 64 on a backbone of another scale); additive compositions resolve to alpha = rank.
LIE_DEFAULT_ALPHA = "auto"
CONFIG_VERSION = 2


@dataclass(frozen=True)
class AdapterConfig:
    """Configuration of low-rank adapters on conv kernels and linear layers.

    Attributes:
        rank: the rank ``r`` of ``ΔW = (alpha / r) · reshape(B @ A)``.
        alpha: a positive number (``alpha / rank`` scales ΔW), or a weight-derived scale for Lie
            compositions: ``"auto"`` sets ``alpha / rank = 1 / mean|W|`` over all adapted weights,
            ``"auto-kind"`` per layer kind (same kernel geometry, e.g. all depthwise 7×7),
            ``"auto-layer"`` per layer. A Lie step changes W by a *fraction* ~ lr·alpha/r of itself,
            LoRA's by ~ lr·alpha/(r·|W|); the weight-derived scale gives the Lie update LoRA's step
            (docs/benchmarks.md, "LieRA's scale"). ``None`` (default) means ``rank`` for
            ``additive`` and ``"auto"`` for Lie compositions; after construction it is never
            ``None``. The resolved ``alpha / rank`` of every layer is stored in the adapter
            (``lora_scaling``) and in every saved artefact, so reloading reproduces the model.
        composition: ``"taylor"`` (default, ``W + W ⊙ ΔW``), ``"exp"`` (``W ⊙ exp(ΔW)``) or
            ``"additive"`` (LoRA, ``W + ΔW``).
        init: ``"lora"`` (``A`` Kaiming-uniform, ``B`` zero) or ``"pissa"`` (factors start at the
            top singular triplets of the reshaped W; the update is taken relative to that start,
            ``ΔW = (alpha / r)(BA − B₀A₀)``, so step 0 is the base model).
        post: ``None`` or ``"dora"`` (``W' = m · V / ‖V‖`` per output channel, m trainable).
        factorization: ``"kernel"`` (``loralib``'s conv factorization, generalised to N spatial
            dims; the paper's parameter counts) or ``"flat"``. See :mod:`liera_vision.core.delta`.
        dropout: rank dropout probability during training (kept components rescaled by 1/(1-p)).
        targets: a preset (``"spatial"``: convs with a kernel larger than 1, the paper's choice;
            ``"pointwise"``: 1×1 convs and linear layers; ``"all"``) or a list of regexes. A regex
            selects a module when it matches its full dotted name or a dotted suffix of it.
        exclude: regexes (same rule) of modules never adapted.
        modules_to_save: regexes of modules trained in full and saved with the adapter (``["head"]``).
        rank_pattern / alpha_pattern: per-layer ``rank`` / ``alpha`` by regex, matched as PEFT does
            (the first key, in insertion order, matching the full name or a dotted suffix of it).
        zero_weight_fallback: for Lie compositions, add ``1[W == 0] ⊙ ΔW`` so exactly-zero weight
            entries (which a multiplicative update cannot move) train additively.
        method, variant: 0.1.0 aliases, accepted on input only (``method="lora"`` is
            ``composition="additive"``, ``method="liera"`` a Lie composition; ``variant="dora"``
            is ``post="dora"``, ``variant="pissa"`` is ``init="pissa"``); reset to ``None``.

    The config is frozen (``dataclasses.replace`` makes a changed copy), so an adapted model cannot
    change under its feet.

    Raises:
        ValueError: naming the field and the accepted values.
    """

    rank: int = 8
    alpha: float | str | None = None
    composition: str | None = None
    init: str = "lora"
    post: str | None = None
    factorization: str = "kernel"
    dropout: float = 0.0
    targets: str | list[str] = "spatial"
    exclude: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float | str] = field(default_factory=dict)
    zero_weight_fallback: bool = False
    method: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # the config is frozen: its fields are normalised once, here
            object.__setattr__(self, name, value)

        self._resolve_aliases(set_)
        _check_choice("composition", self.composition, list(COMPOSITIONS))
        _check_choice("init", self.init, list(INITS))
        _check_choice("post", self.post, [None, *POST_STEPS])
        _check_choice("factorization", self.factorization, list(FACTORIZATIONS))
        set_("rank", _check_rank("rank", self.rank))
        set_("alpha", self._resolve_alpha("alpha", self.alpha))
        set_("dropout", _number("dropout", self.dropout))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            _check_choice("targets", self.targets, list(TARGET_PRESETS), "or a list of regexes")
        else:
            set_("targets", _regex_list("targets", self.targets, allow_none=False))
            if not self.targets:
                raise ValueError("AdapterConfig.targets is an empty list: nothing would be adapted")
        set_("exclude", _regex_list("exclude", self.exclude))
        set_("modules_to_save", _regex_list("modules_to_save", self.modules_to_save))
        set_("rank_pattern", {_check_regex("rank_pattern", k): _check_rank(f"rank_pattern[{k!r}]", v)
                              for k, v in _mapping("rank_pattern", self.rank_pattern).items()})
        set_("alpha_pattern", {_check_regex("alpha_pattern", k): self._resolve_alpha(f"alpha_pattern[{k!r}]", v)
                               for k, v in _mapping("alpha_pattern", self.alpha_pattern).items()})
        if not isinstance(self.zero_weight_fallback, bool):
            raise ValueError("AdapterConfig.zero_weight_fallback must be True or False, "
                             f"got {self.zero_weight_fallback!r}")
        if self.zero_weight_fallback and not self.is_lie:
            raise ValueError("AdapterConfig.zero_weight_fallback applies to Lie compositions only "
                             f"(composition is {self.composition!r})")

    def _resolve_aliases(self, set_) -> None:
        if self.method is not None:
            _check_choice("method", self.method, list(METHODS), "(an alias of composition)")
            if self.composition is None:
                set_("composition", METHODS[self.method])
            elif (self.composition == "additive") != (self.method == "lora"):
                raise ValueError(f"AdapterConfig: method={self.method!r} contradicts composition="
                                 f"{self.composition!r} (method='lora' means composition='additive'; "
                                 "method='liera' means 'taylor' or 'exp')")
        if self.variant is not None:
            _check_choice("variant", self.variant, [None, *VARIANTS], "(an alias of post / init)")
            axis, value, default = VARIANTS[self.variant]
            if getattr(self, axis) not in (default, value):
                raise ValueError(f"AdapterConfig: variant={self.variant!r} contradicts {axis}={getattr(self, axis)!r}")
            set_(axis, value)
        set_("method", None)
        set_("variant", None)
        if self.composition is None:
            set_("composition", METHODS["liera"])

    def _resolve_alpha(self, label: str, alpha):
        if alpha is None:
            return LIE_DEFAULT_ALPHA if self.is_lie else float(self.rank)
        if isinstance(alpha, str) and alpha in SCALE_RULES:
            if not self.is_lie:
                raise ValueError(f"AdapterConfig.{label}={alpha!r} derives the scale from the weights, which "
                                 "suits Lie compositions only; give composition='additive' a number (e.g. rank)")
            return alpha
        try:
            value = _number(label, alpha)
        except ValueError:
            raise ValueError(f"AdapterConfig.{label} must be a positive number or one of {list(SCALE_RULES)}, "
                             f"got {alpha!r}") from None
        if not value > 0:
            raise ValueError(f"AdapterConfig.{label} must be a positive number or one of {list(SCALE_RULES)}, "
                             f"got {alpha!r}")
        return value

    # --- derived labels ------------------------------------------------------------------------
    @property
    def is_lie(self) -> bool:
        """True for the multiplicative (Lie-group) compositions."""
        return COMPOSITIONS[self.composition].lie

    @property
    def family(self) -> str:
        """``"liera"`` for Lie compositions, ``"lora"`` for the additive one."""
        return "liera" if self.is_lie else "lora"

    @property
    def scaling(self) -> float | None:
        """``alpha / rank`` when ``alpha`` is a number; ``None`` when the weights set it (per layer)."""
        return self.alpha / self.rank if isinstance(self.alpha, float) else None

    @property
    def name(self) -> str:
        """Short label (stable across versions: run folders and reports use it), e.g. ``liera-taylor-r8``,
        ``lora-r8``, ``dora+liera-taylor-r16``, ``pissa+dora+liera-exp-r16``."""
        base = f"liera-{self.composition}" if self.is_lie else "lora"
        tags = (("pissa", self.init == "pissa"), ("dora", self.post == "dora"))
        prefix = "".join(f"{tag}+" for tag, on in tags if on)
        return f"{prefix}{base}-r{self.rank}"

    def describe(self) -> str:
        """One line for logs, e.g. ``liera-taylor-r16 (kernel, alpha auto)``."""
        alpha = self.alpha if isinstance(self.alpha, str) else f"{self.alpha:g}"
        return f"{self.name} ({self.factorization}, alpha {alpha})"

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON / YAML safe) with ``"version"``; the aliases are not written."""
        data = dataclasses.asdict(self)
        del data["method"], data["variant"]
        return {"version": CONFIG_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build from :meth:`to_dict` output, a hand-written dict or a 0.1.0 dict.

        A 0.1.0 dict (no ``"version"``, with ``"variant"``, as every 0.1.0 artefact stored it) keeps
        its meaning: its ``alpha=None`` was ``alpha = rank``.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"AdapterConfig.from_dict expects a dict, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", None)
        if version is None and "variant" in data and data.get("alpha") is None:
            data["alpha"] = float(data.get("rank", cls.rank))
        elif isinstance(version, int) and not isinstance(version, bool) and version > CONFIG_VERSION:
            raise ValueError(f"AdapterConfig version {version} is newer than this liera-vision understands "
                             f"({CONFIG_VERSION}); upgrade liera-vision")
        elif version not in (None, CONFIG_VERSION):
            raise ValueError(f"AdapterConfig version must be {CONFIG_VERSION} (or absent in 0.1.0 dicts), "
                             f"got {version!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"AdapterConfig JSON is not valid: {err}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> AdapterConfig:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"AdapterConfig YAML is not valid: {err}") from None
        return cls.from_dict(data)


def _check_choice(name: str, value, choices: list, extra: str = "") -> None:
    if value not in choices:
        raise ValueError(f"AdapterConfig.{name} must be one of {choices}{' ' + extra if extra else ''}, got {value!r}")


def _check_rank(name: str, rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"AdapterConfig.{name} must be a positive integer, got {rank!r}")
    return int(rank)


def _number(name: str, value) -> float:
    """A finite float from a number or a numeric string (YAML reads ``1e-1`` as a string)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"AdapterConfig.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"AdapterConfig.{name} must be finite, got {value!r}")
    return number


def _regex_list(name: str, value, allow_none: bool = True) -> list[str]:
    """A list of regexes; ``None`` (PEFT's "none") is empty and a single string is one regex."""
    if value is None and allow_none:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"AdapterConfig.{name} must be a list of regexes{'' if allow_none else ' or a preset'}, "
                         f"got {value!r}")
    return [_check_regex(name, pattern) for pattern in value]


def _mapping(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"AdapterConfig.{name} must be a dict {{regex: value}}, got {value!r}")
    return value


def _check_regex(name: str, pattern) -> str:
    if not isinstance(pattern, str):
        raise ValueError(f"AdapterConfig.{name} entries must be regex strings, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"AdapterConfig.{name}: {pattern!r} is not a valid regex ({err})") from None
    return pattern
