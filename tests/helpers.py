"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set to anything but empty/``0``/``false``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$DISTAT_SHARED_DATA``). When it is absent the calling test is skipped, except
    under CI (:func:`in_ci`), where it fails: every search, attack and ADA test needs it, and a CI run that
    skipped them all would be green having tested none of the core."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("DISTAT_SHARED_DATA", default))
    if not path.is_dir():
        if in_ci():
            pytest.fail(f"shared data not found at {path} (CI=true: a test needing it fails instead of skipping; "
                        "set DISTAT_SHARED_DATA)", pytrace=False)
        pytest.skip(f"shared data not found at {path}")
    return path


@contextlib.contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as a module (the scripts import their ``common`` as a sibling, so
    ``benchmarks/`` is on ``sys.path`` while the block runs)."""
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search_yaml(tmp_path: Path, backbone: Path, name: str, num_samples: int = 4,
                updates: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                method: dict[str, Any] | None = None) -> Path:
    """A tiny search YAML (2 epochs of 48 SST-2 rows, PWWS on 3 dev examples with 1 actor, 2 trials at a time,
    1 single-CPU worker each) written to ``tmp_path/<name>.yaml``; ``updates`` are merged in, nested dicts
    key by key (``{"trial": {"train": {"epochs": 3}}}``); ``params`` replace the searched parameters and
    ``method`` the base trial's method section (default PGD with one step: a method's own keys only)."""
    import yaml

    cfg = {
        "name": name,
        "seed": 3,
        "trial": {
            "seed": 3,
            "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 48, "max_dev_examples": 24,
                     "max_length": 32},
            "model": {"backbone": str(backbone)},
            "method": method or {"name": "pgd", "adv_steps": 1},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3},
        },
        "attack": {"recipe": "pwws", "n": 3, "split": "dev", "actors": 1},
        "search": {"num_samples": num_samples, "max_concurrent": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "params": {
            "method": {"choice": ["pgd", "adaptive_pgd"]},
            "adv_lr": {"loguniform": [0.01, 0.1]},
            "w_lr": {"choice": [0.1, 1.0], "when": {"method": ["adaptive_pgd"]}},
        },
    }
    _merge(cfg, updates or {})
    if params is not None:
        cfg["params"] = params
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def merged(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``updates`` merged in, nested dicts key by key."""
    import copy

    out = copy.deepcopy(base)
    _merge(out, updates)
    return out


def _merge(into: dict[str, Any], updates: dict[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
