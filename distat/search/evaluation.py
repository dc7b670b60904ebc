"""A trial's robust evaluation: its checkpoint attacked on the search's seeded dev subset.

Runs in the Tune trainable (with the attack actor pool) or in the rank-0 Ray Train worker (without actors).
Every attacked example goes to ``<trial>/attack.csv``; the returned metrics are what the trial reports.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from distat.atomic import write_json
from distat.search.space import SearchConfig
from distat.search.state import ResourceRefs

log = logging.getLogger(__name__)

ATTACK_CSV = "attack.csv"
PROGRESS_FILE = "attack_progress.json"


def robust_eval(scfg: SearchConfig, refs: ResourceRefs, checkpoint: Path, out: Path, *,
                where: dict[str, Any] | None = None, device: Any = None, generator: Any = None
                ) -> dict[str, float | str]:
    """Robust metrics of ``checkpoint`` on the search's attacked dev subset; every attacked example goes to
    ``out/attack.csv``. With attack actors, ``out/attack_progress.json`` follows the evaluation (examples
    done, the actors' nodes and pids, actors replaced) and ``where`` receives the same at the end. Without
    actors the model is attacked in this process, on ``device`` (default CPU). ``generator`` (an
    :class:`distat.augment.ada.Generator`) is needed with ``attack.static``: the ADA victim's adversarial
    examples of the same subset score the model too. The result carries ``threat_spec_hash``, the hash of the
    attack's threat model, whose whole spec goes to ``out/threat_spec.json`` before the attack starts."""
    from distat.attacks.evaluate import robust_evaluate, select_examples
    from distat.attacks.metrics import summarize as summarize_records
    from distat.attacks.metrics import write_records_csv
    from distat.attacks.runner import AttackJob
    from distat.attacks.spec import HASH_KEY, threat_model, write_spec
    from distat.config import load_data, resolve_split
    from distat.models import load_classifier, load_tokenizer
    from distat.training import checkpoint_config

    tcfg = checkpoint_config(checkpoint)
    att = scfg.attack
    t0 = time.perf_counter()
    ds_all = None
    if att.static:
        from distat.training import load_splits

        ds_all, _, _ = load_splits(tcfg)  # the train/dev splits: the fingerprint the ADA victim's key uses
    split = resolve_split(tcfg.data, att.split)  # what the trial's data config maps `dev` to (maybe carved)
    if ds_all is not None and split in ds_all.splits:
        ds = ds_all  # read once
    else:
        ds = load_data(tcfg.data, [att.split])
    examples = select_examples(ds.split(split), att.n, seed=scfg.seed)
    model = load_classifier(checkpoint, ds.num_labels, tcfg.model.trust_remote_code).eval()
    if device is not None and att.actors == 0:
        model = model.to(device)
    tokenizer = load_tokenizer(checkpoint, tcfg.model.trust_remote_code)
    job = AttackJob(recipe=att.recipe, resources=refs.paths(), options=att.options.to_options(),
                    text_fields=ds.text_fields, max_length=tcfg.data.max_length, seed=scfg.seed)
    spec_digest = write_spec(threat_model(job, examples, split=split, n=att.n, subset_seed=scfg.seed), out)
    log.info("robust evaluation set up in %.1f s", time.perf_counter() - t0)
    stats: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        write_json(out / PROGRESS_FILE, {"done": done, "total": total, **stats})

    metrics, records = robust_evaluate(model, tokenizer, examples, job, actors=att.actors,
                                       cpus_per_actor=att.cpus_per_actor, gpus_per_actor=att.gpus_per_actor,
                                       progress=progress if att.actors > 0 else None, pool_stats=stats)
    if where is not None:
        where.update(stats)
    write_records_csv(records, out / ATTACK_CSV)
    robust: dict[str, float | str] = {**metrics.as_dict(), HASH_KEY: spec_digest}
    if ds_all is not None:
        from distat.augment.ada import static_accuracy

        if generator is None:
            raise ValueError("attack.static needs the search's ADA generator")
        static = generator.static_set(tcfg, ds_all, examples, job)
        robust["static_robust_acc"] = static_accuracy(model, tokenizer, static, max_length=tcfg.data.max_length)
        robust["victim_robust_acc"] = summarize_records(static).robust_acc
    # the attacked subset's own clean accuracy is kept apart: clean_acc stays the full dev accuracy
    robust["attack_clean_acc"] = robust.pop("clean_acc")
    for key in ("clean_acc_lo", "clean_acc_hi"):
        robust[f"attack_{key}"] = robust.pop(key)
    return robust
