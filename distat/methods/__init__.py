"""AT methods: one file each, one registry, one union of their settings.

Each method's module holds the method and its settings class (``distat.methods.pgd`` has :class:`PGD` and
:class:`PGDSettings`). This package assembles them: :data:`REGISTRY` (registry key → method class),
:data:`MethodSettings` (the pydantic union, discriminated on ``name``, that the trial config's ``method``
section validates against) and :func:`build` (settings → method object). See :mod:`distat.methods.base`
for the interface and its lifecycle.

In YAML, ``name: adaptive_pgd`` is shorthand for ``name: adaptive, base: pgd``; a validated adaptive
config keeps ``name == "adaptive"`` and ``base``, and ``label`` gives ``adaptive_pgd`` back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, get_args

from pydantic import BeforeValidator, Field, TypeAdapter

from distat.methods.adaptive import BASES, AdaptiveAT, AdaptiveSettings
from distat.methods.base import ATMethod, Settings, StandardSettings, StepContext, StepOutput
from distat.methods.fgm import FGM, FGMSettings
from distat.methods.flooding import FloodingSettings, FloodingX
from distat.methods.freelb import FreeLB, FreeLBSettings
from distat.methods.infobert import InfoBERT, InfoBERTSettings
from distat.methods.mixup import Mixup, MixupSettings
from distat.methods.pgd import PGD, KStepMethod, KStepSettings, PGDSettings
from distat.methods.smart import SMART, SMARTSettings
from distat.methods.tavat import TAVAT, TAVATSettings
from distat.methods.trades import TRADES, TRADESSettings

__all__ = [
    "REGISTRY",
    "ATMethod",
    "AdaptiveSettings",
    "FGMSettings",
    "FloodingSettings",
    "FreeLBSettings",
    "InfoBERTSettings",
    "KStepMethod",
    "KStepSettings",
    "MethodSettings",
    "Mixup",
    "MixupSettings",
    "PGDSettings",
    "SMARTSettings",
    "Settings",
    "StandardSettings",
    "StepContext",
    "StepOutput",
    "TAVATSettings",
    "TRADESSettings",
    "available",
    "build",
    "label_of",
    "parse_settings",
    "settings_class",
]

REGISTRY: dict[str, type[ATMethod]] = {
    cls.name: cls for cls in (ATMethod, FGM, PGD, FreeLB, TAVAT, TRADES, InfoBERT, SMART, FloodingX, AdaptiveAT, Mixup)
}


def available() -> list[str]:
    """The registry keys accepted as ``name`` in YAML (``adaptive`` needs a base)."""
    return list(REGISTRY)


def label_of(data: Mapping[str, Any]) -> str | None:
    """The label (``pgd``, ``adaptive_freelb``) a raw ``method`` mapping names, or None when it names none.

    ``name`` defaults to ``standard``; ``adaptive`` with a ``base`` and the shorthand ``adaptive_<base>``
    both give ``adaptive_<base>``.
    """
    name = data.get("name", "standard")
    if not isinstance(name, str):
        return None
    if name == "adaptive":
        base = data.get("base")
        return f"adaptive_{base}" if isinstance(base, str) and base in BASES else None
    if name.startswith("adaptive_"):
        return name if name.removeprefix("adaptive_") in BASES else None
    return name if name in REGISTRY else None


def settings_class(label: str) -> type[Settings] | None:
    """The settings class of a method label (``adaptive_pgd`` → :class:`AdaptiveSettings`), or None."""
    if label.startswith("adaptive_"):
        return AdaptiveSettings if label.removeprefix("adaptive_") in BASES else None
    cls = REGISTRY.get(label)
    return cls.settings if cls is not None else None


def _normalise(data: Any) -> Any:
    """Before the union dispatches on ``name``: default it, expand the ``adaptive_<base>`` shorthand, and
    turn an unknown name or a misplaced ``base`` into one-line messages (rather than the union's own)."""
    if not isinstance(data, Mapping):
        return data  # a settings object passes through; anything else fails in the union
    data = dict(data)
    name = data.setdefault("name", "standard")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    if name.startswith("adaptive_"):
        base = name.removeprefix("adaptive_")
        if data.get("base") not in (None, base):
            raise ValueError(f"name {name!r} contradicts base {data['base']!r}")
        if base not in BASES:
            raise ValueError(f"unknown method {name!r} (adaptive AT wraps {', '.join(BASES)})")
        data["name"], data["base"] = "adaptive", base
        return data
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(available())})")
    if name == "adaptive" and data.get("base") is None:
        raise ValueError("method 'adaptive' needs base: one of " + ", ".join(BASES))
    if name != "adaptive" and "base" in data:
        raise ValueError(f"base is only for method 'adaptive', not {name!r}")
    return data


#: The trial config's ``method`` section: one settings class per method, chosen by ``name``. A key the named
#: method does not have is an error (pydantic's ``loc`` then holds the name as a tag:
#: ``('method', 'pgd', 'mix_alpha')``; :func:`distat.errors.format_validation_error` shows it as
#: ``method.mix_alpha: unknown key for method 'pgd'``).
MethodSettings = Annotated[
    StandardSettings | FGMSettings | PGDSettings | FreeLBSettings | TAVATSettings | TRADESSettings
    | InfoBERTSettings | SMARTSettings | FloodingSettings | AdaptiveSettings | MixupSettings,
    Field(discriminator="name"),
    BeforeValidator(_normalise),
]

assert set(get_args(get_args(MethodSettings)[0])) == {cls.settings for cls in REGISTRY.values()}, \
    "MethodSettings must list the settings class of every registered method"

_ADAPTER: TypeAdapter[Any] = TypeAdapter(MethodSettings)


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Validate a raw ``method`` mapping (``{"name": "pgd", "adv_steps": 2}``) on its own; pydantic's
    ValidationError on a bad one."""
    return _ADAPTER.validate_python(data)


def build(cfg: Settings) -> ATMethod:
    """The method object for validated settings."""
    return REGISTRY[cfg.name](cfg)
