"""A checkpoint's robust evaluation: every attack of an :class:`~distat.search.space.AttackSettings` (recipes and
static sets) on one seeded example subset, resumable, each attack under its own threat-model spec.

The search scores each trial with it on its dev subset (:func:`robust_eval`, in the Tune trainable with the
attack actor pool, or in the rank-0 Ray Train worker without actors); the test stage
(:mod:`distat.search.test_stage`) re-scores chosen trials on the test split.

Metric names (the stable API): per attack ``<name>`` (a recipe's, or a static set's), ``robust_acc.<name>`` with
``robust_acc_lo.<name>``, ``robust_acc_hi.<name>`` (Wilson 95%) and ``n.<name>``, and its spec hash
``threat_spec_hash.<name>``; a recipe also has ``attack_success_rate.<name>`` (with its interval),
``perturbed_word_pct.<name>``, ``avg_queries.<name>``, ``skipped.<name>``, ``failed.<name>``,
``succeeded.<name>``. The objective is ``robust_acc`` (with ``robust_acc_lo/_hi/_n``): the named attack's, or the
worst case, the minimum over all attacks (``robust_attack`` says which attack gave it; ties go to the first
listed). ``threat_spec_hash`` is the objective's spec: the one attack's spec when there is one, else a
:class:`~distat.attacks.spec.ThreatSuite` of the attacks' hashes and the objective. The unsuffixed
``attack_success_rate``, ``perturbed_word_pct``, ``avg_queries``, ``skipped``, ``failed``, ``succeeded`` and ``n``
are the first recipe's, and ``attack_clean_acc`` (with its interval) is the attacked subset's clean accuracy.

Files in the evaluation folder: with one recipe and nothing else, ``attack.csv`` (every attacked example) and
``threat_spec.json``; with several attacks, ``attack.<name>.csv`` and ``threat_spec.<name>.json`` per attack
and ``threat_spec.json`` for the objective. Each recipe's records are journaled as they come
(``attack[.<name>].jsonl``, :mod:`distat.attacks.journal`): an evaluation killed midway attacks only what is
left when it runs again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distat.atomic import write_json, write_text
from distat.search.space import WORST_CASE, AttackSettings, SearchConfig
from distat.search.state import ResourceRefs

if TYPE_CHECKING:
    from distat.attacks.runner import Example

log = logging.getLogger(__name__)

PROGRESS_FILE = "attack_progress.json"
STATIC_FILE = "static.csv"
"""With ``attack.static``: per attacked example (``index``), whether the model classified the ADA victim's
adversarial version of it correctly (``correct`` 0/1): what ``static_robust_acc`` averages."""
_CLASS_PREFIX = "robust_"  # the per-class scores under attack (robust_macro_f1, robust_recall.<c>...)
_RECIPE_KEYS = ("attack_success_rate", "attack_success_rate_lo", "attack_success_rate_hi", "perturbed_word_pct",
                "avg_queries", "skipped", "failed", "succeeded")


def attack_stem(att: AttackSettings, name: str) -> str:
    """The file stem of attack ``name``'s records: ``attack`` for a lone recipe, else ``attack.<name>``."""
    return "attack" if len(att.names) == 1 else f"attack.{name}"


@dataclass
class EvalTally:
    """What an evaluation did: examples attacked now and taken from journals, per attack."""

    attacked: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)


def evaluate_checkpoint(att: AttackSettings, refs: ResourceRefs, checkpoint: Path, out: Path, *, split: str,
                        n: int | None, seed: int, where: dict[str, Any] | None = None, device: Any = None,
                        generator: Any = None, tally: EvalTally | None = None, progress: Any = None,
                        clean_split: bool = False, weights: str | None = None,
                        work_cache: Path | None = None) -> dict[str, float | str]:
    """Every attack of ``att`` on ``checkpoint``: the first ``n`` (None: all) examples of a ``seed``-ed permutation
    of the trial's ``split`` (a logical name, resolved by the trial's data config); metrics as in the module
    docstring, files into ``out``. ``where`` receives the actors' placement, ``tally`` the attacked/reused counts,
    ``progress(name, done, total)`` each step. ``clean_split``: also the clean scores of the whole split (not only
    the attacked subset): ``clean_acc`` with ``clean_acc_lo/_hi`` and ``clean_n``, plus what
    :func:`distat.training.evaluate` reports beside it (macro-F1, balanced accuracy, per class). ``generator``
    (:class:`distat.augment.ada.Generator`) is needed with ``att.static`` (the ADA victim's examples of the subset
    score the model too). ``weights``: the checkpoint's :func:`~distat.attacks.journal.checkpoint_digest`, when
    the caller has it already (it keys the journals). ``work_cache``: the folder of the search's attack work cache
    (:mod:`distat.attacks.work_cache`), used when ``att.cache``."""
    from distat.attacks.evaluate import select_examples
    from distat.attacks.journal import checkpoint_digest
    from distat.attacks.spec import HASH_KEY, ThreatSuite, threat_model, write_spec
    from distat.config import load_data, resolve_split
    from distat.models import load_classifier, load_tokenizer
    from distat.training import checkpoint_config

    tcfg = checkpoint_config(checkpoint)
    t0 = time.perf_counter()
    ds_all = None
    if att.static:
        from distat.training import load_splits

        ds_all, _, _ = load_splits(tcfg)  # the train/dev splits: the fingerprint the ADA victim's key uses
    actual = resolve_split(tcfg.data, split)  # what the trial's data config maps `dev` to (maybe carved)
    ds = ds_all if ds_all is not None and actual in ds_all.splits else load_data(tcfg.data, [split])
    examples = select_examples(ds.split(actual), n, seed=seed, stratify=att.stratify)
    model = load_classifier(checkpoint, ds.num_labels, tcfg.model.trust_remote_code).eval()
    if device is not None and att.actors == 0:
        model = model.to(device)
    tokenizer = load_tokenizer(checkpoint, tcfg.model.trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    out_metrics: dict[str, float | str] = {}
    if clean_split:
        out_metrics.update(_clean_scores(model, tokenizer, ds.split(actual), tcfg.data.max_length))
    several = len(att.names) > 1
    jobs = _jobs(att, refs, ds, tcfg.data.max_length, seed)
    specs = {name: threat_model(job, examples, split=actual, n=n, subset_seed=seed) for name, job in jobs.items()}
    if work_cache is not None and att.cache:
        from dataclasses import replace

        from distat.attacks.work_cache import WorkCacheRef

        jobs = {name: replace(job, work_cache=WorkCacheRef(str(work_cache), specs[name].hash))
                for name, job in jobs.items()}
    weights = weights or checkpoint_digest(checkpoint)
    log.info("robust evaluation set up in %.1f s", time.perf_counter() - t0)
    per_attack: dict[str, dict[str, Any]] = {}
    subset_clean: dict[str, float] = {}  # the attacked subset's clean accuracy: the same for every recipe
    for name, job in jobs.items():
        digest = write_spec(specs[name], out, name if several else None)
        metrics, records = _attack_one(name, job, digest, att, model, tokenizer, examples, weights, out,
                                       where=where, tally=tally, progress=progress)
        clean = {key: metrics.pop(key) for key in ("clean_acc", "clean_acc_lo", "clean_acc_hi")}
        subset_clean = subset_clean or clean
        metrics.update(_class_metrics(records, ds.num_labels))
        per_attack[name] = {**metrics, HASH_KEY: digest}
    for static in att.static_sets:
        per_attack[static.name] = _static_set(static, model, tokenizer, ds, tcfg.data.max_length, out, several)
    for name, metrics in per_attack.items():
        out_metrics.update({f"{key}.{name}": value for key, value in metrics.items()})
    # the objective: one attack's robust accuracy, or the worst case over all of them
    names = att.names
    chosen = (min(names, key=lambda k: (per_attack[k]["robust_acc"], names.index(k)))
              if att.objective == WORST_CASE else att.objective)
    best = per_attack[chosen]
    out_metrics.update({"robust_acc": best["robust_acc"], "robust_acc_lo": best["robust_acc_lo"],
                        "robust_acc_hi": best["robust_acc_hi"], "robust_acc_n": best["n"], "robust_attack": chosen})
    first = per_attack[next(iter(jobs))]
    out_metrics.update({"n": first["n"], **{k: first[k] for k in _RECIPE_KEYS}})
    if several:
        suite = ThreatSuite(objective=att.objective, attacks={k: str(v[HASH_KEY]) for k, v in per_attack.items()})
        out_metrics[HASH_KEY] = write_spec(suite, out)
    else:
        out_metrics[HASH_KEY] = first[HASH_KEY]
    out_metrics.update({f"attack_{key}": value for key, value in subset_clean.items()})
    out_metrics.update({k: v for k, v in first.items() if k.startswith(_CLASS_PREFIX) and not k.startswith("robust_acc")})
    if ds_all is not None:
        from distat.attacks.metrics import summarize as summarize_records
        from distat.augment.ada import static_outcomes

        if generator is None:
            raise ValueError("attack.static needs the search's ADA generator")
        first_job = next(iter(jobs.values()))
        static = generator.static_set(tcfg, ds_all, examples, first_job)
        correct = static_outcomes(model, tokenizer, static, max_length=tcfg.data.max_length)
        write_static_outcomes(out / STATIC_FILE, static, correct)
        out_metrics["static_robust_acc"] = sum(correct) / len(correct) if correct else 0.0
        out_metrics["victim_robust_acc"] = summarize_records(static).robust_acc
    return out_metrics


def write_static_outcomes(path: Path, records: list[Any], correct: list[bool]) -> None:
    """:data:`STATIC_FILE`: one row per static-set example, by the attacked subset's index."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "correct"])
    writer.writerows([r.index, int(c)] for r, c in zip(records, correct, strict=True))
    write_text(path, buffer.getvalue())


def read_static_outcomes(path: Path) -> dict[int, bool] | None:
    """:data:`STATIC_FILE` as index -> correct, or None when there is none."""
    import csv

    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        return {int(row["index"]): row["correct"] == "1" for row in csv.DictReader(handle)}


def _clean_scores(model: Any, tokenizer: Any, split: Any, max_length: int) -> dict[str, float]:
    """The clean scores of ``model`` on every row of ``split``, accuracy with its Wilson 95% interval."""
    import torch

    from distat.attacks.metrics import wilson_interval
    from distat.data import encode
    from distat.training import evaluate

    param = next(model.parameters())
    limit = getattr(tokenizer, "model_max_length", None) or max_length
    encoded = encode(split, tokenizer, min(max_length, limit))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        scores = evaluate(model, encoded, 64, param.device, pad_id)
    n = int(scores.pop("dev_n"))
    scores.pop("dev_loss", None)
    lo, hi = wilson_interval(round(scores["clean_acc"] * n), n)
    return {**{k: float(v) for k, v in scores.items()}, "clean_acc_lo": lo, "clean_acc_hi": hi, "clean_n": float(n)}


def _attack_one(name: str, job: Any, digest: str, att: AttackSettings, model: Any, tokenizer: Any,
                examples: list[Example], weights: str, out: Path, *, where: dict[str, Any] | None,
                tally: EvalTally | None, progress: Any) -> tuple[dict[str, Any], list[Any]]:
    """One recipe on ``examples``, resumable from its journal; its robust metrics (with the attacked subset's
    clean accuracy) and records."""
    from distat.attacks.journal import AttackJournal, attack_resumably
    from distat.attacks.metrics import summarize, write_records_csv

    stem = attack_stem(att, name)
    journal = AttackJournal(out / f"{stem}.jsonl", spec=digest, checkpoint=weights)
    stats: dict[str, Any] = {}

    def step(done: int, total: int) -> None:
        write_json(out / PROGRESS_FILE, {"attack": name, "done": done, "total": total, **stats})
        if progress is not None:
            progress(name, done, total)

    run = attack_resumably(model, tokenizer, examples, job, journal, actors=att.actors,
                           cpus_per_actor=att.cpus_per_actor, gpus_per_actor=att.gpus_per_actor,
                           progress=step, pool_stats=stats)
    if where is not None:
        where.update(stats)
    if tally is not None:
        tally.attacked[name] = run.attacked
        tally.reused[name] = run.reused
    write_records_csv(run.records, out / f"{stem}.csv")
    return summarize(run.records).as_dict(), run.records


def _jobs(att: AttackSettings, refs: ResourceRefs, ds: Any, max_length: int, seed: int) -> dict[str, Any]:
    """attack name -> its :class:`~distat.attacks.runner.AttackJob` on the dataset ``ds``."""
    from distat.attacks.runner import AttackJob

    return {r.key: AttackJob(recipe=r.recipe, resources=refs.paths(), options=r.options.to_options(),
                             text_fields=ds.text_fields, max_length=max_length, seed=seed,
                             model_batch_size=att.batch_size)
            for r in att.attacks}


def _static_spec(static: Any, ds: Any, max_length: int) -> tuple[Any, Any]:
    """A static set (loaded) and its spec."""
    from distat.attacks.spec import static_set_spec
    from distat.attacks.static import load_static_set

    split = load_static_set(static.path, static.split, num_labels=ds.num_labels, text_fields=ds.text_fields)
    texts = [(split.text_a[i] if split.text_b is not None else None,
              split.text_b[i] if split.text_b is not None else split.text_a[i]) for i in range(len(split))]
    return split, static_set_spec(texts, split.labels, max_length=max_length)


def planned_spec_hash(scfg: SearchConfig, refs: ResourceRefs) -> str:
    """The threat-model spec hash a trial of the search ``scfg`` will record for its robust objective
    (``threat_spec_hash``), computed without a model: the same attacks, subset and resources
    :func:`robust_eval` uses. For a search whose data is a searched parameter it is the base trial's."""
    from distat.attacks.evaluate import select_examples
    from distat.attacks.spec import ThreatSuite, threat_model
    from distat.config import load_data, resolve_split

    att = scfg.attack
    data = scfg.base_trial().data
    actual = resolve_split(data, att.split)
    ds = load_data(data, [att.split])
    examples = select_examples(ds.split(actual), att.n, seed=scfg.seed, stratify=att.stratify)
    hashes = {name: threat_model(job, examples, split=actual, n=att.n, subset_seed=scfg.seed).hash
              for name, job in _jobs(att, refs, ds, data.max_length, scfg.seed).items()}
    hashes.update({static.name: _static_spec(static, ds, data.max_length)[1].hash for static in att.static_sets})
    if len(att.names) > 1:
        return ThreatSuite(objective=att.objective, attacks=hashes).hash
    return next(iter(hashes.values()))


def _static_set(static: Any, model: Any, tokenizer: Any, ds: Any, max_length: int, out: Path,
                several: bool) -> dict[str, Any]:
    """A static set's accuracy (its whole set), with its spec written beside the attacks'."""
    from distat.attacks.spec import HASH_KEY, write_spec
    from distat.attacks.static import static_eval

    split, spec = _static_spec(static, ds, max_length)
    digest = write_spec(spec, out, static.name if several else None)
    acc = static_eval(model, tokenizer, split, max_length=max_length)
    return {"robust_acc": acc["static_acc"], "robust_acc_lo": acc["static_acc_lo"],
            "robust_acc_hi": acc["static_acc_hi"], "n": acc["static_n"], HASH_KEY: digest}


def _class_metrics(records: list[Any], num_labels: int) -> dict[str, float]:
    """Per-class scores under attack: ``robust_macro_f1``, ``robust_balanced_acc``, per class
    ``robust_recall.<c>`` (the share of class c still classified c under attack: for a spam filter,
    1 - robust_recall of spam is the spam made to pass) with its Wilson interval, precision, F1 and support."""
    from distat.attacks.metrics import class_scores, robust_recall_intervals

    out = {**class_scores(records, num_labels), **robust_recall_intervals(records, num_labels)}
    out.pop("robust_acc", None)  # summarize's robust_acc, already there (and the objective may be another's)
    return {k: float(v) for k, v in out.items()}


def robust_eval(scfg: SearchConfig, refs: ResourceRefs, checkpoint: Path, out: Path, *,
                where: dict[str, Any] | None = None, device: Any = None, generator: Any = None,
                work_cache: Path | None = None) -> dict[str, float | str]:
    """A search trial's robust metrics: every attack of ``scfg.attack`` on its seeded dev subset
    (:func:`evaluate_checkpoint`). Without actors the model is attacked in this process, on ``device``
    (default CPU)."""
    return evaluate_checkpoint(scfg.attack, refs, checkpoint, out, split=scfg.attack.split, n=scfg.attack.n,
                               seed=scfg.seed, where=where, device=device, generator=generator,
                               work_cache=work_cache)
