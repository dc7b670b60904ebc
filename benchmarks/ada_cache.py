"""ADA cache: a 3-trial AMDA search (augmentation ratios 0.25, 0.5 and 1.0) with the shared pool vs the same
search generating per trial.

* shared (the default, ``augment.cache: true``): one victim is trained and the first ⌈1.0·N⌉ training rows are
  attacked once, into ``<storage>/ada_cache``; each trial takes its ratio's share of that pool;
* fresh (``augment.cache: false``): every trial trains its own victim and attacks just the ⌈r·N⌉ rows it needs.

``cached_vs_fresh`` = shared search wall time / fresh search wall time (target ≤ 0.5). Both searches run one
trial at a time on a fresh local Ray with their own storage (nothing cached in advance), with the same three
trial configurations (``points_to_evaluate``) and the same robust evaluation. ``ada_work_cached_vs_fresh``
compares only the trials' ADA time (victims and pools: built, waited for or read), ``*_ada_s`` its sums.

What bounds the whole-search ratio: with V the victim's training, A the attack of all N rows and F a trial's
own work (its training on the augmented set, its robust evaluation, start-up), shared costs 3F + V + A and
fresh 3F + 3V + 1.75A (ratios 0.25 + 0.5 + 1.0). Even with F = 0 the ratio is ≥ 0.57 when attacks dominate
(A ≫ V); ≤ 0.5 needs A ≤ 4V - 12F, i.e. a victim far costlier to train than a trial.

    .venv/bin/python benchmarks/ada_cache.py [--train-rows 400] [--victim-epochs 3]

Needs the offline resources: `.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import report, run_search

RATIOS = (0.25, 0.5, 1.0)


def search_config(name: str, train_rows: int, cache: bool, victim_epochs: int) -> dict:
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
            # the victim must learn (a collapsed one yields no adversarial example): a few epochs
            "augment": {"recipe": "pwws", "victim": {"epochs": victim_epochs}, "max_modify_rate": 0.3, "actors": 1,
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
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--victim-epochs", type=int, default=3)
    args = parser.parse_args()

    from distat import resources
    from distat.search.space import parse_search_config
    from distat.search.state import finished_trials

    cache = resources.cache_dir()
    points = [{"aug_ratio": r} for r in RATIOS]
    results = {}
    for name, shared in (("shared", True), ("fresh", False)):
        work = Path(tempfile.mkdtemp(prefix=f"distat-bench-ada-{name}-"))
        scfg = parse_search_config(search_config(name, args.train_rows, shared, args.victim_epochs))
        elapsed, trials = run_search(scfg, work, cache, points)
        finals = list(finished_trials(work / "searches" / name).values())
        generated = (len(list((work / "searches" / "ada_cache").glob("ada-*")))
                     + len(list((work / "searches" / name).glob("trials/*/ada_private/ada-*"))))
        victims = (len(list((work / "searches" / "ada_cache").glob("victim-*")))
                   + len(list((work / "searches" / name).glob("trials/*/ada_private/victim-*"))))
        results[name] = {"wall_s": elapsed, "pools_generated": generated, "victims_trained": victims,
                         "ada_examples": sorted(f.metrics.get("ada_examples", 0) for f in finals),
                         "ada_s": sum(f.metrics.get("time_ada_s", 0.0) for f in finals),
                         "clean_acc": sorted(round(f.metrics["clean_acc"], 4) for f in finals)}
        print(f"{name}: {elapsed:.1f} s  {results[name]}", file=sys.stderr)

    out = {
        "cached_vs_fresh": results["shared"]["wall_s"] / results["fresh"]["wall_s"],
        "ada_work_cached_vs_fresh": results["shared"]["ada_s"] / max(results["fresh"]["ada_s"], 1e-9),
        "shared_s": results["shared"]["wall_s"],
        "fresh_s": results["fresh"]["wall_s"],
        "shared_ada_s": results["shared"]["ada_s"],
        "fresh_ada_s": results["fresh"]["ada_s"],
        "shared_pools": results["shared"]["pools_generated"],
        "fresh_pools": results["fresh"]["pools_generated"],
        "shared_victims": results["shared"]["victims_trained"],
        "fresh_victims": results["fresh"]["victims_trained"],
        "shared_ada_examples": results["shared"]["ada_examples"],
        "fresh_ada_examples": results["fresh"]["ada_examples"],
        "shared_clean_acc": results["shared"]["clean_acc"],
        "train_rows": args.train_rows,
        "victim_epochs": args.victim_epochs,
    }
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
