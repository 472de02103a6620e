"""AdapterConfig: what to adapt and how. Round-trips through dict / JSON / YAML."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

METHODS = ("liera", "lora")
VARIANTS = (None, "dora", "pissa")
COMPOSITIONS = ("taylor", "exp")
FACTORIZATIONS = ("kernel", "flat")
TARGET_PRESETS = ("spatial", "pointwise", "all")


@dataclass
class AdapterConfig:
    """Configuration of a low-rank adapter applied to conv kernels and linear layers.

    Attributes:
        method: ``"liera"`` composes the update multiplicatively with the frozen weight
            (``W ⊙ exp(ΔW)`` or ``W + W ⊙ ΔW``); ``"lora"`` adds it (``W + ΔW``).
        variant: ``None``, ``"dora"`` (per-output-channel magnitude/direction split applied to
            the composed weight) or ``"pissa"`` (factors start at the principal singular
            triplets of the reshaped weight; the update is taken relative to that start).
        rank: the rank ``r`` of the factorization ``ΔW = (alpha / r) · B @ A``.
        alpha: scale numerator; ``None`` means ``alpha = rank`` (scale 1), LoRA's usual choice.
            A Lie update is relative (``W ⊙ ΔW``), so its steps are ~mean|W| (≈ 0.02 for
            ConvNeXt kernels) times LoRA's: the transfer study in ``docs/benchmarks.md`` found
            ``alpha / rank ≈ 1 / mean|W|`` (64 there) best, and the project's LieRA configs use it.
            ``apply_adapters``' report prints mean|W| and the suggested value for your weights.
        dropout: rank dropout: during training each inner (rank) component of the update is
            dropped with this probability and the rest are rescaled by ``1 / (1 - p)``.
        composition: for ``liera`` only: ``"taylor"`` (default, ``W + W ⊙ ΔW``) or ``"exp"``
            (``W ⊙ exp(ΔW)``). ``None`` picks the method's default.
        factorization: ``"kernel"`` (the ``loralib`` conv factorization, ``A: (r·k, C_in·k)``,
            ``B: (C_out/groups·k, r·k)``; the paper's parameter counts) or ``"flat"``
            (``B: (C_out, r)``, ``A: (r, C_in/groups·kh·kw)``).
        targets: a preset (``"spatial"``: convs with a kernel larger than 1×1, the paper's choice;
            ``"pointwise"``: 1×1 convs and linear layers; ``"all"``) or a list of regexes. A regex
            selects a module when it matches the module's full dotted name or a dotted suffix of
            it (``"dwconv"`` selects ``stages.0.blocks.1.dwconv``).
        exclude: regexes (same matching rule) of modules never adapted.
        modules_to_save: regexes of modules that stay fully trainable and are saved in the
            adapter file (e.g. ``["head"]``).
        zero_weight_fallback: for ``liera``: add ``1[W == 0] ⊙ ΔW`` so that exactly-zero weight
            entries (which a multiplicative update cannot move) are trained additively.
    """

    method: str = "liera"
    variant: str | None = None
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    composition: str | None = None
    factorization: str = "kernel"
    targets: str | list[str] = "spatial"
    exclude: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    zero_weight_fallback: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"AdapterConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"AdapterConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.composition is None:
            self.composition = "taylor" if self.method == "liera" else "additive"
        if self.method == "lora" and self.composition != "additive":
            raise ValueError(f"AdapterConfig.composition={self.composition!r} applies to method='liera' only; "
                             "method='lora' is additive")
        if self.method == "liera" and self.composition not in COMPOSITIONS:
            raise ValueError(f"AdapterConfig.composition must be one of {COMPOSITIONS}, got {self.composition!r}")
        if self.factorization not in FACTORIZATIONS:
            raise ValueError(f"AdapterConfig.factorization must be one of {FACTORIZATIONS}, "
                             f"got {self.factorization!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"AdapterConfig.rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not float(self.alpha) > 0:
            raise ValueError(f"AdapterConfig.alpha must be positive or None, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            if self.targets not in TARGET_PRESETS:
                raise ValueError(f"AdapterConfig.targets must be one of {TARGET_PRESETS} or a list of regexes, "
                                 f"got {self.targets!r}")
        else:
            self.targets = list(self.targets)
            if not self.targets:
                raise ValueError("AdapterConfig.targets is an empty list: nothing would be adapted")
        self.exclude = list(self.exclude)
        self.modules_to_save = list(self.modules_to_save)
        if self.zero_weight_fallback and self.method != "liera":
            raise ValueError("AdapterConfig.zero_weight_fallback applies to method='liera' only")

    @property
    def scaling(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank

    @property
    def name(self) -> str:
        """Short label, e.g. ``liera-taylor-r8``, ``dora+liera-exp-r16``, ``lora-r8``."""
        base = self.method if self.method == "lora" else f"liera-{self.composition}"
        prefix = f"{self.variant}+" if self.variant else ""
        return f"{prefix}{base}-r{self.rank}"

    def describe(self) -> str:
        """One line for logs, e.g. ``liera-taylor-r16 (kernel, scaling 1)``."""
        return f"{self.name} ({self.factorization}, scaling {self.scaling:g})"

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"AdapterConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> AdapterConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(text))
