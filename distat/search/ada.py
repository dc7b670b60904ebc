"""ADA for the trials of a search: one shared, content-addressed cache, victims trained as Ray tasks.

The cache is ``<storage>/ada_cache`` (beside the search folder: shared by every search in that storage and
every node). A victim trains as a Ray task holding one trial worker's resources; its attacks use actors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distat.config import TrialConfig
from distat.search.space import ResourceSettings
from distat.search.state import SearchState

ADA_CACHE_DIR = "ada_cache"


def generator(state: SearchState) -> Any:
    """The :class:`distat.augment.ada.Generator` of a search's trials."""
    from distat.augment.ada import Generator
    from distat.augment.cache import FolderCache

    cache = FolderCache(state.dir.parent / ADA_CACHE_DIR)
    return Generator(cache, state.resources.paths(), train_victim=VictimOnRay(state.search.resources))


def _victim_task(config: dict[str, Any], out: str) -> str:
    from distat.augment.ada import train_victim_here

    return str(train_victim_here(TrialConfig.model_validate(config), Path(out)))


class VictimOnRay:
    """Trains an ADA victim as a Ray task with one trial worker's resources (a picklable callable)."""

    def __init__(self, res: ResourceSettings) -> None:
        self.res = res

    def __call__(self, vcfg: TrialConfig, out: Path) -> Path:
        import ray

        task = ray.remote(_victim_task).options(num_cpus=self.res.cpus_per_worker, num_gpus=self.res.gpus,
                                                scheduling_strategy="DEFAULT", max_retries=1)
        return Path(ray.get(task.remote(vcfg.model_dump(mode="json"), str(out))))
