"""``distat attack`` (a TextAttack recipe against a classifier folder) and ``distat static`` (accuracy on a
saved adversarial set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distat.app.resources import AttackResources, Notify, _quiet
from distat.errors import DistatError


@dataclass(frozen=True)
class AttackRequest:
    model: str  # a classifier folder
    data: str  # dataset folder or builtin:/hf: name
    split: str = "test"
    recipe: str = "textfooler"
    n: int | None = 200  # examples attacked (a fixed seeded subset); None = all
    seed: int = 0
    actors: int = 2  # Ray attack actors; 0 = in this process
    gpus_per_actor: float = 0.0
    address: str | None = None
    device: str = "auto"
    max_length: int = 128
    max_candidates: int | None = None
    max_modify_rate: float | None = None
    query_budget: int | None = None
    sim_threshold: float | None = None
    stopwords_ignore_case: bool = False
    batch_size: int = 32  # texts per victim / sentence-encoder forward
    csv: str | None = None  # every attacked example
    export: str | None = None  # the successful adversarial examples as a static TSV set


@dataclass
class AttackOutcome:
    metrics: dict[str, float]  # RobustMetrics.as_dict(): values with _lo/_hi interval bounds
    records: list[Any]
    exported: int | None = None  # adversarial examples written to ``export``
    spec: Any = None  # the ThreatModel behind the numbers (its .hash: the same as a search's for the same attack)


def _check(req: AttackRequest) -> None:
    from distat.attacks.recipes import RECIPES

    if req.recipe not in RECIPES:
        raise DistatError(f"unknown attack recipe {req.recipe!r} (choose from {', '.join(RECIPES)})")
    if req.n is not None and req.n <= 0:
        raise DistatError("--n must be positive")
    if req.batch_size < 1:
        raise DistatError("--batch-size must be positive")
    if req.actors < 0:
        raise DistatError("--actors must be 0 (attack in this process) or more")
    for flag, target in (("--csv", req.csv), ("--export", req.export)):
        # the folder is created when the file is written; refuse only what can never be written
        if target and (Path(target).is_dir() or any(p.is_file() for p in Path(target).expanduser().resolve().parents)):
            raise DistatError(f"{flag} {target}: not a writable file path (a folder, or below a file)")


def _data_config(req: AttackRequest) -> Any:
    """The data settings ``--split`` resolves with: the model's own trial config when it was trained on
    ``req.data`` (so ``dev`` is the dev split it was tuned on, carved the same way), else the defaults."""
    from distat.config import DataConfig
    from distat.training import checkpoint_config

    try:
        trained = checkpoint_config(Path(req.model)).data
    except DistatError:  # a plain classifier folder (no distat_meta.json) or an unreadable one: the defaults
        trained = None
    same = trained is not None and (trained.path == req.data or (
        Path(trained.path).expanduser().resolve() == Path(req.data).expanduser().resolve()))
    return trained if same else DataConfig(path=req.data)


def attack(req: AttackRequest, where: AttackResources | None = None, *, notify: Notify = _quiet,
           progress: Callable[[int, int], None] | None = None,
           on_examples: Callable[[int], None] | None = None) -> AttackOutcome:
    """Attack ``req.model`` on a seeded subset of ``req.data:req.split``. ``on_examples(n)`` hears how many
    examples will be attacked before the attack starts, ``progress(done, total)`` as it goes."""
    import contextlib

    from distat.attacks.evaluate import robust_evaluate, select_examples
    from distat.attacks.metrics import export_adversarial_tsv, write_records_csv
    from distat.attacks.recipes import AttackOptions
    from distat.attacks.runner import AttackJob
    from distat.config import load_data, resolve_split
    from distat.models import load_classifier, load_tokenizer, pick_device, resolve_backbone
    from distat.search.cluster import ray_session

    _check(req)
    paths = (where or AttackResources.at()).require(req.recipe)
    dcfg = _data_config(req)
    split_name = resolve_split(dcfg, req.split)  # checked before any model loads
    ds = load_data(dcfg, [req.split])
    split = ds.split(split_name)
    model_dir = resolve_backbone(req.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir, ds.num_labels).to(pick_device(req.device)).eval()
    examples = select_examples(split, req.n, req.seed)
    options = AttackOptions(max_candidates=req.max_candidates, max_modify_rate=req.max_modify_rate,
                            query_budget=req.query_budget, sim_threshold=req.sim_threshold,
                            stopwords_ignore_case=req.stopwords_ignore_case)
    job = AttackJob(recipe=req.recipe, resources=paths, options=options, text_fields=ds.text_fields,
                    max_length=req.max_length, seed=req.seed, model_batch_size=req.batch_size)
    from distat.attacks.spec import threat_model

    spec = threat_model(job, examples, split=split_name, n=req.n, subset_seed=req.seed)
    shown = req.split if split_name == req.split else f"{req.split} = {split_name}"
    notify(f"distat attack: {req.recipe} on {len(examples)} examples of {req.data}:{shown}, "
           f"{req.actors or 'no'} actor(s)")
    if on_examples is not None:
        on_examples(len(examples))
    with ray_session(req.address, num_cpus=req.actors) if req.actors > 0 else contextlib.nullcontext():
        metrics, records = robust_evaluate(model, tokenizer, examples, job, actors=req.actors,
                                           gpus_per_actor=req.gpus_per_actor, progress=progress)
    if req.csv:
        write_records_csv(records, req.csv)
    exported = None
    if req.export:
        pair = len(ds.text_fields) > 1
        exported = export_adversarial_tsv(records, req.export, text_field=ds.text_fields[-1],
                                          other_field=ds.text_fields[0] if pair else None)
        notify(f"wrote {exported} adversarial examples to {req.export}")
    return AttackOutcome(metrics=metrics.as_dict(), records=list(records), exported=exported, spec=spec)


def static(model: str, data: str, split: str | None = None, *, num_labels: int | None = None,
           max_length: int = 128) -> dict[str, float]:
    """Accuracy of the classifier folder ``model`` on a saved adversarial set (AdvGLUE or one exported by
    ``distat attack --export``)."""
    from distat.attacks.static import load_static_set, static_eval
    from distat.models import load_classifier, load_tokenizer, resolve_backbone

    examples = load_static_set(data, split, num_labels=num_labels)
    model_dir = resolve_backbone(model)
    labels = num_labels or max(2, max(examples.labels) + 1)
    classifier = load_classifier(model_dir, labels)
    return static_eval(classifier, load_tokenizer(model_dir), examples, max_length=max_length)
