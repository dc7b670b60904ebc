"""Search overhead: the same 4 fixed trial configurations run back to back in one plain Python process
(core training + in-process attack, no Ray, no MLflow) and as a distat search (Ray Tune + Optuna, Ray Train
trials attacked in their own Train worker, MLflow child runs, Pareto artifacts), once with 1 concurrent trial
and once with 2. ``--attack-actors N`` attacks with N actors per trial instead (the actor pool, for large
attacked sets: every trial then starts its actors, ~10 s each here).

* ``overhead_ratio`` = search wall time (1 concurrent trial) / plain wall time. Target ≤ 1.10. Both sides
  give each trial one CPU thread: a search trial's Ray Train worker (and attack actor) holds 1 CPU (Ray sets
  its thread count to it), so the plain side runs with ``torch.set_num_threads(1)``. What is left is Tune,
  Train, actor start-up and MLflow bookkeeping, a roughly fixed cost per trial (``overhead_per_trial_s``),
  so the ratio falls as trials get longer (``--train-rows``); the per-trial ``*_s`` values say where it goes.
* ``concurrency2_speedup`` = the 1-concurrent search's wall time / the 2-concurrent search's (2 cores here,
  so at most ~2).
* ``demo_wall_s``: ``distat search search_spaces/demo.yaml`` end to end in a subprocess, the README's demo
  (skip it with ``--no-demo``).

Wall times start before ``ray.init`` (the search pays for starting Ray) and end when the front is written.
The 4 configurations are the search space's first points (``points_to_evaluate``), so both sides train
exactly the same trials. The last line is JSON.

    .venv/bin/python benchmarks/search_overhead.py [--train-rows 240] [--no-demo] [--attack-actors 0]

Needs the offline resources: `.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report, run_search

REPO = Path(__file__).resolve().parents[1]

POINTS = [
    {"method": "pgd", "adv_lr": 0.03},
    {"method": "freelb", "adv_lr": 0.05},
    {"method": "adaptive_pgd", "adv_lr": 0.03},
    {"method": "adaptive_freelb", "adv_lr": 0.05},
]


def search_config(name: str, train_rows: int, concurrent: int, attack_actors: int = 0) -> dict:
    return {
        "name": name,
        "seed": 13,
        "trial": {
            "seed": 13,
            "data": {"path": "builtin:rotten_tomatoes", "max_train_examples": train_rows, "max_dev_examples": 100,
                     "max_length": 64},
            "model": {"backbone": "default"},
            "method": {"name": "pgd", "adv_steps": 2, "init_mag": 0.05},
            "train": {"epochs": 1, "batch_size": 16, "lr": 2e-4},
        },
        "attack": {"recipe": "textfooler", "n": 8, "split": "dev", "actors": attack_actors, "cpus_per_actor": 1,
                   "options": {"max_modify_rate": 0.3}},
        "search": {"num_samples": len(POINTS), "max_concurrent": concurrent},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "params": {
            "method": {"choice": [p["method"] for p in POINTS]},
            "adv_lr": {"loguniform": [0.01, 0.1]},
        },
    }


def run_plain(scfg, workdir: Path, cache: Path) -> tuple[float, list[dict]]:
    """The 4 trials back to back in this process, one thread, attacks in-process."""
    import torch

    from distat.search.evaluation import robust_eval
    from distat.search.space import apply_params
    from distat.search.state import ResourceRefs
    from distat.training import run_trial

    torch.set_num_threads(1)
    plain_attack = scfg.model_copy(update={"attack": scfg.attack.model_copy(update={"actors": 0})})
    refs = ResourceRefs(cache_dir=str(cache))
    results = []
    t0 = time.perf_counter()
    for i, point in enumerate(POINTS):
        out = workdir / f"plain_{i}"
        t_train = time.perf_counter()
        result = run_trial(apply_params(scfg, point, str(out)), out)
        t_attack = time.perf_counter()
        robust = robust_eval(plain_attack, refs, result.checkpoint, out)
        results.append({"clean_acc": result.metrics["clean_acc"], "robust_acc": robust["robust_acc"],
                        "train_s": t_attack - t_train, "attack_s": time.perf_counter() - t_attack})
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(os.cpu_count() or 1)
    return elapsed, results


def run_search_timed(scfg, workdir: Path, cache: Path) -> tuple[float, list[dict]]:
    from distat.search.state import finished_trials

    elapsed, points = run_search(scfg, workdir, cache, POINTS)
    finals = finished_trials(workdir / "searches" / scfg.name)
    out = []
    for p in points:
        m = finals[p.trial_id].metrics
        out.append({"method": p.params["method"], "clean_acc": p.clean_acc, "robust_acc": p.robust_acc,
                    "train_s": m["time_train_s"], "train_loop_s": m["time_train_loop_s"],
                    "attack_s": m.get("time_attack_s", 0.0)})
    return elapsed, out


def _per_trial(rows: list[dict], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows) / len(rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-rows", type=int, default=240)
    parser.add_argument("--no-demo", action="store_true", help="skip timing the demo search")
    parser.add_argument("--attack-actors", type=int, default=0,
                        help="attack actors per trial in the searches (0: attack in the trial's Train worker)")
    args = parser.parse_args()

    from distat import resources
    from distat.search.space import parse_search_config

    cache = resources.cache_dir()
    work = Path(tempfile.mkdtemp(prefix="distat-bench-search-"))

    t_plain, plain = run_plain(parse_search_config(search_config("plain", args.train_rows, 1)), work, cache)
    print(f"plain: {t_plain:.1f} s  {plain}", file=sys.stderr)
    t_s1, s1 = run_search_timed(parse_search_config(search_config("one", args.train_rows, 1, args.attack_actors)), work, cache)
    print(f"search, 1 concurrent: {t_s1:.1f} s  {s1}", file=sys.stderr)
    t_s2, s2 = run_search_timed(parse_search_config(search_config("two", args.train_rows, 2, args.attack_actors)), work, cache)
    print(f"search, 2 concurrent: {t_s2:.1f} s  {s2}", file=sys.stderr)

    demo_s = None
    if not args.no_demo:
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "distat"), "search", str(REPO / "search_spaces/demo.yaml"),
                        "--storage", str(work / "demo"), "--tracking-uri", f"sqlite:///{work / 'demo.db'}"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        demo_s = time.perf_counter() - t0

    same = sorted(round(r["clean_acc"], 6) for r in plain) == sorted(round(r["clean_acc"], 6) for r in s1)
    result = {
        "overhead_ratio": t_s1 / t_plain,
        "concurrency2_speedup": t_s1 / t_s2,
        "demo_wall_s": demo_s,
        "plain_s": t_plain,
        "search1_s": t_s1,
        "search2_s": t_s2,
        # the search's extra time per trial, start-up and Pareto artifacts included: the ratio it gives
        # depends on the trials' length (8–13 s here on 2 cores: 1.14 at 1000 rows, 1.06 at 2000)
        "overhead_per_trial_s": (t_s1 - t_plain) / len(POINTS),
        "same_clean_acc": same,
        "train_rows": args.train_rows,
        "attack_actors": args.attack_actors,
        # per trial, seconds: where the search's extra time goes
        "plain_train_s": _per_trial(plain, "train_s"),
        "plain_attack_s": _per_trial(plain, "attack_s"),
        "search1_train_fit_s": _per_trial(s1, "train_s"),
        "search1_train_loop_s": _per_trial(s1, "train_loop_s"),
        "search1_attack_s": _per_trial(s1, "attack_s"),
    }
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
