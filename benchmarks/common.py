"""What the benchmark scripts share (they run as ``python benchmarks/<name>.py``, so this imports as ``common``)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    """``$DISTAT_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DISTAT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def run_search(scfg, workdir: Path, cache: Path, points: list[dict]) -> tuple[float, list]:
    """A whole search (``points`` evaluated first) on a fresh local Ray, timed from ``ray.init`` to the
    written front; returns the wall time and the trials' :class:`TrialPoint` s."""
    import time

    from distat.search.cluster import ray_session
    from distat.search.driver import finish_search, start_search, trial_points

    storage = workdir / "searches"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    t0 = time.perf_counter()
    with ray_session():
        start_search(scfg, storage=storage, tracking_uri=uri, cache_dir=cache, points_to_evaluate=points)
        finish_search(scfg, storage / scfg.name, uri)
    return time.perf_counter() - t0, trial_points(storage / scfg.name)


def report(result: dict) -> None:
    """Every value on stderr, one per line, then the whole result as the last stdout line (JSON, 4 decimals)."""
    import json
    import sys

    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:>{width}}: {v:.4f}" if isinstance(v, float) else f"{k:>{width}}: {v}", file=sys.stderr)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
