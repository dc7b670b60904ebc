"""What every offline attack resource is: a name, a default place under the cache, a presence check, a note,
and (for some) a build. The concrete resources are in :mod:`distat.resources.registry`.

"Present" means "completely written": every builder writes into a uniquely named staging file or folder
(:mod:`distat.atomic`) and renames it into place, and every presence check looks only at the final path and
rejects what a writer outside distat may have left half-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from distat.errors import DistatError

if TYPE_CHECKING:
    from distat.resources.paths import ResourcePaths

__all__ = ["BUILD_HINT", "BuildOptions", "Resource", "ResourceError"]

BUILD_HINT = "run `distat resources build`"


class ResourceError(DistatError):
    """An attack resource is missing, incomplete or cannot be built."""


@dataclass(frozen=True)
class BuildOptions:
    """Inputs of the builders that need local data: the counter-fitting constraints, the MLM corpus."""

    lexical_dir: Path | None = None  # counter-fitting pair files + vocabulary + SimLex (shared/data/lexical)
    shared_data: Path | None = None  # folder of GLUE-style datasets: MLM corpus and calibration sentences
    extra_text: tuple[Path, ...] = ()  # the user's own text files, one sentence per line (MLM corpus)
    mlm_steps: int = 500  # ~6 minutes on one CPU core: held-out top-5 0.42 (0.12 for word frequency)


class Resource:
    """One offline resource. Subclasses set the class attributes and override what differs.

    ``name`` is the :class:`~distat.resources.paths.ResourcePaths` field and the ``--resource NAME=PATH`` key;
    ``part`` the ``distat resources build --parts`` name, or None for a resource distat cannot build (a
    package installed with distat, or a file the user gives); ``build_last`` puts a slow build (minutes)
    after the quick ones, so that a quick build that fails stops ``distat resources build`` first.
    """

    name: ClassVar[str]
    part: ClassVar[str | None] = None
    build_last: ClassVar[bool] = False
    what: ClassVar[str]
    """the note when present: what the resource is."""
    how_to_get: ClassVar[str]
    """the note when missing: how to get it."""

    def default(self, cache: Path) -> Path | str:
        """Where the resource lives when ``--resource`` does not say."""
        raise NotImplementedError

    def parse(self, value: str) -> Path | str:
        """The location an override ``NAME=value`` names."""
        return Path(value).expanduser()

    def present(self, location: Path | str) -> bool:
        """Whether the resource at ``location`` is there and completely written."""
        raise NotImplementedError

    def note(self, location: Path | str, present: bool) -> str:
        """One line for ``distat resources show``."""
        return self.what if present else self.how_to_get

    def build(self, paths: ResourcePaths, options: BuildOptions) -> None:
        """Build the resource at its place in ``paths`` (atomically)."""
        raise ResourceError(f"{self.name} is not built by distat: {self.how_to_get}")
