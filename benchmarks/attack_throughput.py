"""Attack throughput: the distat pool with 2 actors vs TextAttack's own single-process Attacker, and the work
cache's second trial vs its first.

The same 40 shared SST-2 test sentences, the same TextFooler recipe (distat's offline build of it), the
packaged MiniLM fine-tuned briefly on SST-2 train rows. Both sides are timed from "the victim model is
in memory" to "every example has a result", recipe construction included (the pool builds its recipe in
every actor, in parallel); starting Ray is reported apart, since a search has it running already.
TextAttack's side embeds with TextAttack's own sentence-encoder call (every text of a call, padded batches);
distat's embeds each distinct text once, in unpadded equal-length groups. Outcomes (status and adversarial
text) are compared example by example.

The work cache (``cached_second_trial_vs_first``): a first victim attacks the examples with a search's work cache;
a second victim (another seed) attacks them with that cache warm, and again with an empty cache; the ratio of the
two times, and whether their outcomes are identical (``cache_identical_outcomes``). The last line is JSON.

    .venv/bin/python benchmarks/attack_throughput.py [--n 40] [--train-rows 800]

Needs the offline resources: `.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from common import report, shared_data

N_DEFAULT = 40



def victim(train_rows: int, seed: int = 13):
    from distat.config import parse_trial_config
    from distat.training import run_trial

    cfg = parse_trial_config({
        "seed": seed,
        "data": {"path": str(shared_data() / "sst2"), "max_train_examples": train_rows, "max_dev_examples": 200,
                 "max_length": 64},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-4},
        "output_dir": tempfile.mkdtemp(prefix="distat-bench-"),
    })
    result = run_trial(cfg)
    return result.model.eval(), result.tokenizer, result.metrics["clean_acc"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=N_DEFAULT)
    parser.add_argument("--train-rows", type=int, default=800)
    args = parser.parse_args()

    from distat import resources
    from distat.attacks.evaluate import select_examples
    from distat.attacks.metrics import summarize
    from distat.attacks.pool import AttackPool
    from distat.attacks.recipes import build_attack
    from distat.attacks.runner import AttackJob
    from distat.data import load_dataset

    paths = resources.resolve(resources.cache_dir())
    model, tokenizer, dev_acc = victim(args.train_rows)
    test = load_dataset(shared_data() / "sst2", splits=["test"]).split("test")
    examples = select_examples(test, args.n, seed=0)
    job = AttackJob(recipe="textfooler", resources=paths, max_length=64)

    # --- TextAttack's own single-process Attacker, with its HuggingFaceModelWrapper
    ta = resources.import_textattack(paths.wordnet)
    tokenizer.model_max_length = 64  # the wrapper pads every input to this length
    t0 = time.perf_counter()
    attack = build_attack("textfooler", ta.models.wrappers.HuggingFaceModelWrapper(model, tokenizer), paths)
    for constraint in attack.constraints:  # TextAttack's SBERT call: every text of the call, one padded batch
        if hasattr(constraint, "prime"):
            constraint.encode = lambda texts, c=constraint: c.model.encode(texts, show_progress_bar=False,
                                                                            convert_to_tensor=True)
    dataset = ta.datasets.Dataset([(e.text, e.label) for e in examples])
    attack_args = ta.AttackArgs(num_examples=len(examples), disable_stdout=True, silent=True, random_seed=0)
    baseline = ta.Attacker(attack, dataset, attack_args).attack_dataset()
    t_baseline = time.perf_counter() - t0

    # --- distat's runner in this process (dynamic padding, no actors): separates wrapper from parallelism
    from distat.attacks.runner import AttackRunner

    t0 = time.perf_counter()
    sequential = AttackRunner(job, model, tokenizer).run(examples)
    t_runner = time.perf_counter() - t0

    # --- the distat pool, 2 actors
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_ray = time.perf_counter() - t0
    t0 = time.perf_counter()
    with AttackPool(job, model, tokenizer, actors=2) as pool:
        records = pool.run(examples)
    t_pool = time.perf_counter() - t0
    ray.shutdown()

    # --- the work cache: a first victim fills it, a second one attacks with it warm, then with an empty one
    import dataclasses
    import tempfile as tf
    from pathlib import Path

    from distat.attacks.work_cache import WorkCacheRef

    cache_root = Path(tf.mkdtemp(prefix="distat-work-cache-"))
    warm_ref, cold_ref = WorkCacheRef(str(cache_root / "warm"), "bench"), WorkCacheRef(str(cache_root / "cold"), "bench")
    AttackRunner(dataclasses.replace(job, work_cache=warm_ref), model, tokenizer).run(examples)
    second, second_tokenizer, _ = victim(args.train_rows, seed=14)
    t0 = time.perf_counter()
    warm = AttackRunner(dataclasses.replace(job, work_cache=warm_ref), second, second_tokenizer).run(examples)
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold = AttackRunner(dataclasses.replace(job, work_cache=cold_ref), second, second_tokenizer).run(examples)
    t_cold = time.perf_counter() - t0

    def outcome(status: str, text: str | None) -> tuple[str, str | None]:
        return status, text

    kinds = {"SuccessfulAttackResult": "success", "FailedAttackResult": "failed", "SkippedAttackResult": "skipped"}
    base = [outcome(kinds[type(r).__name__],
                    r.perturbed_result.attacked_text.text if kinds[type(r).__name__] == "success" else None)
            for r in baseline]
    ours = [outcome(r.status, r.perturbed_text) for r in records]
    identical = sum(a == b for a, b in zip(base, ours, strict=True))
    metrics = summarize(records)
    succeeded = max(metrics.succeeded, 1)
    total_queries = sum(r.num_queries for r in records if r.status != "skipped")
    result = {
        "pool2_vs_textattack": t_baseline / t_pool,
        "runner_vs_textattack": t_baseline / t_runner,
        "pool2_vs_runner": t_runner / t_pool,
        "pool_equals_runner": records == sequential,
        "pool2_examples_per_s": len(examples) / t_pool,
        "textattack_examples_per_s": len(examples) / t_baseline,
        "identical_outcomes": identical / len(examples),
        "cached_second_trial_vs_first": t_warm / t_cold,
        "cache_identical_outcomes": sum(a == b for a, b in zip(warm, cold, strict=True)) / len(examples),
        "queries_per_success": total_queries / succeeded,
        "ray_init_s": t_ray,
        "n": len(examples),
        "victim_dev_acc": dev_acc,
        "robust_acc": metrics.robust_acc,
        "attack_success_rate": metrics.attack_success_rate,
    }
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
