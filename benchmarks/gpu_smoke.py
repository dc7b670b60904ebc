"""GPU smoke check: a 2-trial search on one GPU, then the attack's examples/s with 1 and 4 GPU actors.

What a user of a GPU cluster relies on and a CPU machine cannot show:

* the search: 2 trials at once, each a Ray Train worker with ``use_gpu`` and a quarter of the GPU, training
  under bf16 autocast (``model.bf16``, the default); each trial's robust evaluation in 2 attack actors that hold
  a quarter of the GPU each. Checked from the trials' own records: every Train worker and every attack actor
  ran on ``cuda`` with a GPU id assigned by Ray.
* the attack alone (``distat attack`` on one trial's final model, the search's attack settings): examples/s with 1 actor
  and with 4 actors sharing the GPU (``gpus_per_actor`` 0.25).

The packaged MiniLM (or ``--backbone PATH``) on the shared SST-2 rows; the recipe is PWWS by default (it needs
only WordNet from the resource cache; ``--recipe textfooler`` needs the whole cache). The last line is JSON;
the script exits 1 when a check fails (the JSON says which).

    python benchmarks/gpu_smoke.py [--backbone default] [--recipe pwws] [--train-rows 2000] [--n 100]
                                   [--epochs 2] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import report, run_search, shared_data

SHARE = 0.25  # of the GPU: each Train worker and each attack actor


def config(backbone: str, recipe: str, train_rows: int, n: int, epochs: int, gpu: bool = True) -> object:
    from distat.search.space import parse_search_config

    share = SHARE if gpu else 0
    return parse_search_config({
        "name": "gpu_smoke", "seed": 13,
        "trial": {"seed": 13,
                  "data": {"path": str(shared_data() / "sst2"), "max_train_examples": train_rows,
                           "max_dev_examples": 400, "max_length": 64},
                  "model": {"backbone": backbone, "bf16": True},
                  "method": {"name": "pgd", "adv_steps": 2, "adv_lr": 0.03, "max_norm": 0.0},
                  "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-4}},
        "attack": {"recipe": recipe, "n": n, "actors": 2, "cpus_per_actor": 1, "gpus_per_actor": share,
                   "options": {"max_modify_rate": 0.3}},
        "search": {"num_samples": 2, "max_concurrent": 2, "clean_acc_floor": 0.6},
        "resources": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": 1, **({"gpus_per_worker": share} if gpu else {})},
        "params": {"method": {"choice": ["standard", "freelb"]},
                   "adv_lr": {"choice": [0.03, 0.1], "when": {"method": ["freelb"]}}},
    })


def _ran_on(part: dict, device: str) -> bool:
    """A placement record (Train worker or attack actor) on ``device``, with a Ray-assigned GPU exactly when cuda."""
    return str(part.get("device", "")).startswith(device) and bool(part.get("gpu_ids")) == (device == "cuda")


def search_checks(search_dir: Path, device: str = "cuda") -> tuple[dict, list[str]]:
    """What the trials' records say about where each part ran, and the checks that failed (every Train worker and
    attack actor on ``device``, with a Ray-assigned GPU when that is ``cuda``)."""
    finals = [json.loads(p.read_text()) for p in sorted(search_dir.glob("trials/*/final.json"))]
    failed: list[str] = []
    if len(finals) != 2:
        failed.append(f"{len(finals)} trials finished, not 2")
    out: dict = {"trials": []}
    for f in finals:
        where, m = f["placement"], f["metrics"]
        workers, actors = where.get("train_workers", []), where.get("attack_actors", [])
        row = {"method": f["params"].get("method"), "clean_acc": m.get("clean_acc"), "robust_acc": m.get("robust_acc"),
               "train_devices": [w.get("device") for w in workers], "train_gpu_ids": [w.get("gpu_ids") for w in workers],
               "actor_devices": [a.get("device") for a in actors], "actor_gpu_ids": [a.get("gpu_ids") for a in actors],
               "time_train_s": m.get("time_train_s"), "time_attack_s": m.get("time_attack_s")}
        out["trials"].append(row)
        if not workers or not all(_ran_on(w, device) for w in workers):
            failed.append(f"trial {f['trial_id']}: a Train worker not on {device}: {workers}")
        if len(actors) != 2 or not all(_ran_on(a, device) for a in actors):
            failed.append(f"trial {f['trial_id']}: attack actors not 2 on {device}: {actors}")
    # both trials trained at the same time: a quarter of the GPU each
    walls = sorted(f["train_wall"] for f in finals)
    out["trials_overlapped"] = len(walls) == 2 and walls[1][0] < walls[0][1]
    if not out["trials_overlapped"]:
        failed.append(f"the 2 trials did not train at the same time: {walls}")
    return out, failed


def mlflow_checks(uri: str) -> tuple[dict, list[str]]:
    """The search's MLflow runs: one parent, one child per trial, both finished."""
    from mlflow.tracking import MlflowClient

    from distat.tracking.mlflow import TAG_PARENT, TAG_TRIAL

    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    children = [r for r in runs if TAG_TRIAL in r.data.tags]
    parents = [r for r in runs if r not in children]
    out = {"mlflow_parents": len(parents), "mlflow_children": len(children),
           "mlflow_status": sorted({r.info.status for r in runs})}
    failed = []
    if len(parents) != 1 or len(children) != 2 or out["mlflow_status"] != ["FINISHED"] or any(
            r.data.tags.get(TAG_PARENT) != parents[0].info.run_id for r in children):
        failed.append(f"MLflow: not one finished parent run with 2 finished children: {out}")
    return out, failed


def throughput(model_dir: Path, recipe: str, n: int, actors: int, gpu: bool = True) -> dict:
    """``distat attack`` on ``model_dir`` with ``actors`` actors of a quarter GPU each: examples/s over the whole
    call (Ray and the actors started inside it) and between the first and the last shard done."""
    from distat.app.attack import AttackRequest, attack

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    out = attack(AttackRequest(model=str(model_dir), data=str(shared_data() / "sst2"), split="dev", recipe=recipe,
                               n=n, seed=0, actors=actors, gpus_per_actor=SHARE if gpu else 0,
                               max_length=64, max_modify_rate=0.3, device="cuda" if gpu else "cpu"),
                 progress=lambda done, total: marks.append((time.perf_counter(), done)))
    wall = time.perf_counter() - t0
    steady = ((marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
              if len(marks) > 1 and marks[-1][0] > marks[0][0] else float("nan"))
    return {"examples": len(out.records), "wall_s": wall, "examples_per_s": len(out.records) / wall,
            "steady_examples_per_s": steady, "robust_acc": out.metrics.get("robust_acc")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="default", help="'default' (the packaged MiniLM) or a model folder")
    parser.add_argument("--recipe", default="pwws")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--n", type=int, default=100, help="dev examples attacked per trial and per throughput run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--cpu", action="store_true",
                        help="the same runs without a GPU (to try the script and the environment before a GPU run)")
    args = parser.parse_args()

    import torch

    from distat import resources

    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (--cpu tries the same runs without one)", file=sys.stderr)
        return 2
    result: dict = {"gpu": torch.cuda.get_device_name(0) if gpu else None, "torch": torch.__version__,
                    "bf16_supported": torch.cuda.is_bf16_supported() if gpu else None}
    cache = resources.cache_dir()
    work = Path(tempfile.mkdtemp(prefix="distat-gpu-smoke-"))
    scfg = config(args.backbone, args.recipe, args.train_rows, args.n, args.epochs, gpu)
    wall, _ = run_search(scfg, work, cache, [{"method": "standard"}, {"method": "freelb", "adv_lr": 0.1}])
    checks, failed = search_checks(work / "searches" / "gpu_smoke", "cuda" if gpu else "cpu")
    tracked, not_tracked = mlflow_checks(f"sqlite:///{work / 'mlflow.db'}")
    failed += not_tracked
    result.update({"search_s": wall, **checks, **tracked})
    print(json.dumps(result), flush=True)  # the search's part, whatever happens next
    if not args.skip_throughput:
        model = sorted((work / "searches" / "gpu_smoke" / "trials").glob("*/checkpoints/epoch_*"))[-1]
        for actors in (1, 4):
            result[f"attack_{actors}_actors"] = throughput(model, args.recipe, args.n, actors, gpu)
        one, four = (result[f"attack_{k}_actors"]["steady_examples_per_s"] for k in (1, 4))
        result["four_vs_one_actors"] = four / one if one else float("nan")
    result["failed"] = failed
    result["work"] = str(work)
    report(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
