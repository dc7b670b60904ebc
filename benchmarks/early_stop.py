"""Multi-objective early stopping: the same search with and without ``search.early_stop``, on the same seeds.

The packaged MiniLM on 800 shared SST-2 rows, a space where some settings cannot learn in the budget (a
learning rate of 1e-6) or start slowly (PGD with a large step), 16 trials (8 fixed points, then seeded draws
from the rest of the space), 2 at a time, 4 epochs each, the demo's clean floor (0.65); robust accuracy from
TextFooler (K = 10) on a fixed dev subset (100 sentences), attacked in each trial's Train worker. With early
stopping the trials are probed after epoch 1 (a smaller seeded subset, a query budget) and the bottom 2/3 of
each rung is stopped (asynchronous successive halving over non-dominated sorting under the clean floor,
reduction factor 3 as MO-ASHA's default). Both searches sample the same configurations: the points are fixed
(``search.points``), so the comparison is of what stopping costs and saves, not of two samplers' luck.

The rung is in epochs, so the rows per epoch decide how far a trial has trained when it is judged: 800 rows
put epoch 1 at 50 optimiser steps. With 400 (25 steps) several trials that end on the front were still at the
majority rate there, like the never-learners (results/early_stop-2026-11-30-c.md).

Printed: a per-trial table (each point without early stopping, after the rung epoch, and with early stopping,
with the scheduler's reason), the wall time of each search, ``time_ratio`` (with / without: the target is
≤ 0.6), the hypervolume of each final front (reference (0, 0); a stopped trial is never on its front) and
``hypervolume_ratio`` (target ≥ 0.9), the highest robust accuracy on each front (the hypervolume from (0, 0)
weighs clean accuracy as much as robust, so losing the most robust trials can cost little of it), how many
trials were stopped, and the probe's rank agreement with the full evaluation over the trials probed and not
stopped (a user measures it over every trial first, with ``early_stop.stop: false``). The last line is JSON.

    .venv/bin/python benchmarks/early_stop.py [--train-rows 800] [--n 100] [--epochs 4] [--trials 16] [--keep]

About 80 minutes on 2 CPU cores (the plain search ~50, the other ~27). Needs the offline resources:
`.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import report, run_search, shared_data

# a model collapsed to one class (0.51 of these dev rows) looks "robust": as in the demo, it is kept off the front.
# With every trial a fixed point, the floor changes no trial, only which points count and which trials rank last
# at a rung (a trial below it there ranks after every trial above it).
FLOOR = 0.65
RUNG = 1  # the early-stopping search's one rung (epoch)
# (method, adv_lr, lr): two that cannot learn in a few epochs (lr 1e-6), a slow starter (PGD α 0.1), the others ordinary
POINTS = [
    ("standard", None, 2e-4), ("pgd", 0.03, 2e-4), ("freelb", 0.1, 2e-4), ("pgd", 0.03, 1e-6),
    ("freelb", 0.03, 2e-4), ("standard", None, 1e-6), ("pgd", 0.1, 1e-4), ("freelb", 0.06, 1e-4),
]


def config(name: str, train_rows: int, n: int, epochs: int, trials: int, early_stop: bool) -> object:
    from distat.search.space import parse_search_config

    return parse_search_config({
        "name": name, "seed": 13,
        "trial": {"seed": 13,
                  "data": {"path": str(shared_data() / "sst2"), "max_train_examples": train_rows,
                           "max_dev_examples": 200, "max_length": 64},
                  "model": {"backbone": "default"},
                  "method": {"name": "pgd", "adv_steps": 2, "adv_lr": 0.03, "max_norm": 0.0},
                  "train": {"epochs": epochs, "batch_size": 16, "lr": 2e-4}},
        "attack": {"recipe": "textfooler", "n": n, "actors": 0,
                   "options": {"max_candidates": 10, "max_modify_rate": 0.3}},
        "search": {"num_samples": trials, "max_concurrent": 2, "clean_acc_floor": FLOOR,
                   **({"early_stop": {"rungs": [RUNG], "probe_n": 24, "probe_query_budget": 150}} if early_stop else {})},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "params": {"method": {"choice": ["standard", "pgd", "freelb"]},
                   "adv_lr": {"choice": [0.03, 0.06, 0.1], "when": {"method": ["pgd", "freelb"]}},
                   "lr": {"choice": [2e-4, 1e-4, 1e-6]}},
    })


GRID = [(m, a, lr) for m in ("standard", "pgd", "freelb") for a in ((None,) if m == "standard" else (0.03, 0.06, 0.1))
        for lr in (2e-4, 1e-4, 1e-6)]  # the whole space: 21 points


def chosen(trials: int) -> list[tuple]:
    """The 8 fixed points, then (``--trials`` above 8) points of the rest of the space drawn with a fixed seed:
    a longer search, as a sampler would propose it, not picked by hand."""
    import random

    rest = [p for p in GRID if p not in POINTS]
    random.Random(0).shuffle(rest)
    return (POINTS + rest)[:trials]


def points(trials: int) -> list[dict]:
    return [{"method": m, "lr": lr, **({"adv_lr": a} if a is not None else {})} for m, a, lr in chosen(trials)]


def most_robust(points: list) -> float:
    """The highest robust accuracy on the front of ``points`` (NaN when the front is empty)."""
    from distat.tracking.pareto import pareto_front

    return max((p.robust_acc for p in pareto_front(points)), default=float("nan"))


def floored(search_dir: Path) -> list:
    """The search's trials with the clean-accuracy floor applied (below it: off the front)."""
    from distat.search.driver import trial_points

    return trial_points(search_dir, FLOOR)


def per_trial(work: Path) -> list[str]:
    """A Markdown table, one row per point in the plain search's finishing order: its final values and wall
    time without early stopping, its clean accuracy and dev loss after the rung epoch (from the plain trial's
    history), and what became of it with early stopping, with the scheduler's reason at the rung."""
    from distat.search.probe import read_decision
    from distat.search.state import TRIALS_DIR, TrainResult, finish_order, finished_trials

    def key(params: dict) -> tuple:
        return params.get("method"), params.get("adv_lr"), params.get("lr")

    def wall(result) -> str:
        start = result.train_wall[0]
        return f"{result.finish_time - start:.0f} s"

    def acc(x) -> str:
        return f"{x:.3f}" if isinstance(x, int | float) else "-"

    runs = {}
    for name in ("plain", "stopping"):
        search = work / name / "searches" / name
        done = finished_trials(search)
        runs[name] = {key(done[t].params): (search / TRIALS_DIR / t, done[t]) for t in finish_order(done)}
    lines = [f"| point | without: clean, robust (wall) | after epoch {RUNG}: clean, dev loss | with early stopping "
             f"(wall) | at rung {RUNG} |", "|---|---|---|---|---|"]
    for point, (plain_dir, plain) in runs["plain"].items():
        method, adv_lr, lr = point
        label = f"{method}{'' if adv_lr is None else f' α {adv_lr}'}, lr {lr:g}"
        at_rung = next((h for h in TrainResult.load(plain_dir).history if int(h.get("epoch", 0)) == RUNG), {})
        without = f"{acc(plain.metrics.get('clean_acc'))}, {acc(plain.metrics.get('robust_acc'))} ({wall(plain)})"
        rung = f"{acc(at_rung.get('clean_acc'))}, {acc(at_rung.get('dev_loss'))}"
        es_dir, es = runs["stopping"].get(point, (None, None))
        if es is None:
            with_es, reason = "-", "-"
        else:
            m = es.metrics
            with_es = (f"stopped: {acc(m.get('clean_acc'))}, probe {acc(m.get('probe_robust_acc'))} ({wall(es)})"
                       if "early_stopped_epoch" in m else
                       f"{acc(m.get('clean_acc'))}, {acc(m.get('robust_acc'))} ({wall(es)})")
            decision = read_decision(es_dir, RUNG)
            reason = decision["reason"] if decision is not None else "-"
        lines.append(f"| {label} | {without} | {rung} | {with_es} | {reason} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-rows", type=int, default=800,
                        help="training rows: with batch 16, epoch 1 (the rung) is rows / 16 optimiser steps")
    parser.add_argument("--n", type=int, default=100, help="dev examples attacked by the full evaluation")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every trial (the rung is epoch 1)")
    parser.add_argument("--trials", type=int, default=16, choices=range(2, len(GRID) + 1), metavar="2..21",
                        help="trials per search: the 8 fixed points, then seeded draws from the rest of the space")
    parser.add_argument("--keep", action="store_true",
                        help="keep the two searches' folders (every trial's checkpoints: ~0.4 GB a trial)")
    args = parser.parse_args()

    from distat import resources
    from distat.search.probe import proxy_agreement
    from distat.tracking.pareto import hypervolume

    cache = resources.cache_dir()
    resources.resolve(cache)
    work = Path(tempfile.mkdtemp(prefix="distat-bench-es-"))
    plain_s, _ = run_search(config("plain", args.train_rows, args.n, args.epochs, args.trials, False), work / "plain", cache,
                            points(args.trials))
    es_s, _ = run_search(config("stopping", args.train_rows, args.n, args.epochs, args.trials, True),
                         work / "stopping", cache, points(args.trials))
    agreement = proxy_agreement(work / "stopping" / "searches" / "stopping")
    plain, stopped_points = (floored(work / name / "searches" / name) for name in ("plain", "stopping"))
    hv_plain, hv_es = hypervolume(plain), hypervolume(stopped_points)
    stopped = sum(1 for p in stopped_points if "early_stopped_epoch" in p.extra)
    print("\n".join(per_trial(work)), file=sys.stderr)
    if args.keep:
        print(f"work folder: {work}", file=sys.stderr)
    else:  # an 8-trial run leaves 5-7 GB of checkpoints: eight kept runs filled a disk during a ninth
        shutil.rmtree(work, ignore_errors=True)
    report({"time_ratio": es_s / plain_s, "hypervolume_ratio": hv_es / hv_plain if hv_plain else float("nan"),
            "plain_s": plain_s, "early_stop_s": es_s, "hypervolume_plain": hv_plain, "hypervolume_early_stop": hv_es,
            "robust_best_plain": most_robust(plain), "robust_best_early_stop": most_robust(stopped_points),
            "trials": args.trials, "stopped": stopped, "proxy_spearman": agreement.rho, "proxy_pairs": agreement.n,
            "train_rows": args.train_rows, "n": args.n, "epochs": args.epochs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
