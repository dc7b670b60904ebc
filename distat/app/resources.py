"""``distat resources build|show`` and the attack resources every other action checks before it starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default ``notify``: messages go nowhere (the CLI passes a printer)."""


def shared_data_dir() -> Path | None:
    """``$DISTAT_SHARED_DATA`` (default ``../shared/data``) when it is a folder."""
    path = Path(os.environ.get("DISTAT_SHARED_DATA", "../shared/data"))
    return path if path.is_dir() else None


@dataclass(frozen=True)
class AttackResources:
    """The resource cache an action uses (``--cache-dir``, default ``$DISTAT_CACHE_DIR`` or
    ``~/.cache/distat``) and its ``--resource NAME=PATH`` overrides."""

    cache: Path
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def at(cls, cache_dir: str | os.PathLike[str] | None = None,
           overrides: dict[str, str] | None = None) -> AttackResources:
        from distat import resources

        return cls(resources.cache_dir(None if cache_dir is None else str(cache_dir)), dict(overrides or {}))

    def require(self, recipe: str) -> Any:
        """The resolved resource paths, after checking that ``recipe`` finds everything it needs (one line
        naming what is missing otherwise)."""
        from distat.attacks.recipes import check_recipe

        return check_recipe(self.cache, self.overrides, recipe)


def build_resources(where: AttackResources, parts: Sequence[str] | None = None, *, lexical: Path | None = None,
                    shared_data: Path | None = None, text: Sequence[Path] = (), mlm_steps: int = 500,
                    force: bool = False, notify: Notify = _quiet) -> dict[str, Path]:
    """Build the offline attack resources (``parts``, default all) into the cache; part -> its path."""
    from distat import resources

    shared = shared_data or shared_data_dir()
    lexical = lexical or (shared / "lexical" if shared else None)
    options = resources.BuildOptions(lexical_dir=lexical, shared_data=shared, mlm_steps=mlm_steps,
                                     extra_text=tuple(text))
    parts = list(parts or resources.PARTS)
    notify(f"distat resources: building {', '.join(parts)} into {where.cache}")
    return resources.build(where.cache, parts=parts, overrides=where.overrides, options=options, force=force)


def show_resources(where: AttackResources) -> dict[str, dict[str, Any]]:
    """name -> {"present", "path", "note"} for every resource."""
    from distat import resources

    return resources.show(where.cache, where.overrides)
