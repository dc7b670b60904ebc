"""AT methods: one file each, one registry.

``build(cfg)`` turns a :class:`distat.config.MethodConfig` into a method object; ``available()`` lists the
registry keys accepted in YAML. See :mod:`distat.methods.base` for the interface and its lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distat.methods.adaptive import AdaptiveAT
from distat.methods.base import ATMethod, StepContext, StepOutput
from distat.methods.fgm import FGM
from distat.methods.freelb import FreeLB
from distat.methods.mixup import Mixup
from distat.methods.pgd import PGD, KStepMethod
from distat.methods.tavat import TAVAT
from distat.methods.trades import TRADES

if TYPE_CHECKING:
    from distat.config import MethodConfig

__all__ = ["ATMethod", "KStepMethod", "Mixup", "StepContext", "StepOutput", "available", "build", "REGISTRY"]

REGISTRY: dict[str, type[ATMethod]] = {
    cls.name: cls for cls in (ATMethod, FGM, PGD, FreeLB, TAVAT, TRADES, AdaptiveAT, Mixup)
}


def available() -> list[str]:
    return list(REGISTRY)


def build(cfg: MethodConfig) -> ATMethod:
    return REGISTRY[cfg.name](cfg)
