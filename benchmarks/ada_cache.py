"""ADA cache: a 3-trial AMDA search (augmentation ratios 0.25, 0.5 and 1.0) with the shared pool vs the same
search generating per trial.

* shared (the default, ``augment.cache: true``): one victim is trained and the first ⌈1.0·N⌉ training rows are
  attacked once, into ``<storage>/ada_cache``; each trial takes its ratio's share of that pool;
* fresh (``augment.cache: false``): every trial trains its own victim and attacks just the ⌈r·N⌉ rows it needs.

``cached_vs_fresh`` = shared search wall time / fresh search wall time (target ≤ 0.5). Both searches run one
trial at a time on a fresh local Ray with their own storage (nothing cached in advance), with the same three
trial configurations (``points_to_evaluate``) and the same robust evaluation. The last line is JSON.

    .venv/bin/python benchmarks/ada_cache.py [--train-rows 200]

Needs the offline resources: `.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import report, run_search

RATIOS = (0.25, 0.5, 1.0)


def search_config(name: str, train_rows: int, cache: bool) -> dict:
    return {
        "name": name,
        "seed": 13,
        "trial": {
            "seed": 13,
            "data": {"path": "builtin:rotten_tomatoes", "max_train_examples": train_rows, "max_dev_examples": 100,
                     "max_length": 64},
            "model": {"backbone": "default"},
            "method": {"name": "mixup", "mix_type": "tmix", "mix_alpha": 2.0},
            "train": {"epochs": 1, "batch_size": 16, "lr": 2e-4},
            "augment": {"recipe": "pwws", "victim": {"epochs": 1}, "max_modify_rate": 0.3, "actors": 1,
                        "cache": cache},
        },
        "attack": {"recipe": "textfooler", "n": 8, "split": "dev", "actors": 1, "cpus_per_actor": 1,
                   "options": {"max_modify_rate": 0.3}},
        "search": {"num_samples": len(RATIOS), "max_concurrent": 1},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "params": {"aug_ratio": {"choice": list(RATIOS)}},
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-rows", type=int, default=200)
    args = parser.parse_args()

    from distat.attacks import resources
    from distat.search.space import parse_search_config

    cache = resources.cache_dir()
    points = [{"aug_ratio": r} for r in RATIOS]
    results = {}
    for name, shared in (("shared", True), ("fresh", False)):
        work = Path(tempfile.mkdtemp(prefix=f"distat-bench-ada-{name}-"))
        scfg = parse_search_config(search_config(name, args.train_rows, shared))
        elapsed, trials = run_search(scfg, work, cache, points)
        finals = [json.loads(p.read_text()) for p in (work / "searches" / name).glob("trials/*/final.json")]
        generated = (len(list((work / "searches" / "ada_cache").glob("ada-*")))
                     + len(list((work / "searches" / name).glob("trials/*/ada_private/ada-*"))))
        victims = (len(list((work / "searches" / "ada_cache").glob("victim-*")))
                   + len(list((work / "searches" / name).glob("trials/*/ada_private/victim-*"))))
        results[name] = {"wall_s": elapsed, "pools_generated": generated, "victims_trained": victims,
                         "ada_examples": sorted(f["metrics"].get("ada_examples", 0) for f in finals)}
        print(f"{name}: {elapsed:.1f} s  {results[name]}", file=sys.stderr)

    out = {
        "cached_vs_fresh": results["shared"]["wall_s"] / results["fresh"]["wall_s"],
        "shared_s": results["shared"]["wall_s"],
        "fresh_s": results["fresh"]["wall_s"],
        "shared_pools": results["shared"]["pools_generated"],
        "fresh_pools": results["fresh"]["pools_generated"],
        "shared_victims": results["shared"]["victims_trained"],
        "fresh_victims": results["fresh"]["victims_trained"],
        "shared_ada_examples": results["shared"]["ada_examples"],
        "fresh_ada_examples": results["fresh"]["ada_examples"],
        "train_rows": args.train_rows,
    }
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
