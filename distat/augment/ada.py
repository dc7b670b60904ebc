"""ADA: adversarial examples of the training set, generated once and shared (the "AD" of AMDA).

Three content-addressed entries of a :class:`~distat.augment.cache.FolderCache` (in a search: the
``ada_cache/`` folder beside the searches of its storage, so every node and every later search sees them):

* ``victim-<hash>``: the model attacked, a standard fine-tune of the trial's backbone on the trial's train
  rows (hash of the dataset fingerprint, the rows picked and the victim's training settings), or a given
  checkpoint (hash of its path, size and modification time);
* ``ada-<hash>``: the attack records of the first ⌈pool_ratio·N⌉ rows of a seeded permutation of the N
  train rows (hash of the victim's key, the recipe and its settings, the pool size). A trial with
  augmentation ratio r keeps the successful adversarial examples among the first ⌈r·N⌉ rows: pools are
  nested, so one pool generated for the largest ratio serves every trial;
* ``static-<hash>``: the victim's adversarial examples of the attacked dev subset, for *static*
  evaluation (every model scored on the same examples, made against the victim) next to the default
  *targeted* evaluation (a new attack on each model). AMDA's Table 1 shows static numbers overstate
  robustness; distat reports both when asked.

Adversarial examples keep their source row's label: word-substitution attacks under the recipes'
similarity and POS constraints are taken as label-preserving, as in the paper.

Training a victim and attacking are callables (defaults: in this process, or the attack actor pool when
``actors > 0``), so the search can run them as Ray tasks with the trial's resources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distat.augment.cache import COMPLETE, FolderCache
from distat.config import AugmentConfig, TrialConfig
from distat.data import Dataset, Split, write_rows
from distat.methods import StandardSettings

log = logging.getLogger(__name__)

AUGMENT_FILE = "augment.jsonl"
TrainVictim = Callable[[TrialConfig, Path], Path]  # (victim config, output folder) → checkpoint folder
Attack = Callable[[Path, list[Any], Any, AugmentConfig], list[Any]]  # (checkpoint, examples, job, settings) → records


def _digest(material: Any) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / COMPLETE).read_text() or "{}")


# --------------------------------------------------------------------------------------------------
# keys


def victim_config(cfg: TrialConfig) -> TrialConfig:
    """The standard fine-tune ADA attacks: the trial's data and backbone, method ``standard``, the victim's
    epochs and learning rate, no augmentation."""
    aug = cfg.augment or AugmentConfig()
    train = cfg.train.model_copy(update={"epochs": aug.victim.epochs, "lr": aug.victim.lr or cfg.train.lr})
    return cfg.model_copy(update={"method": StandardSettings(), "train": train, "augment": None,
                                  "data": cfg.data.model_copy(update={"augment_file": None})})


def victim_key(cfg: TrialConfig, ds: Dataset) -> str:
    aug = cfg.augment or AugmentConfig()
    if aug.victim.checkpoint:
        ckpt = Path(aug.victim.checkpoint).resolve()
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt.iterdir() if p.is_file())
        return "victim-" + _digest({"checkpoint": str(ckpt), "files": files})
    from distat.config import resolve_data
    from distat.models import resolve_backbone

    victim = victim_config(cfg)
    # the effective split names (a trial's config may hold them resolved or not: the same victim either way)
    vcfg = victim.model_copy(update={"data": resolve_data(victim.data)}).model_dump(mode="json", exclude={"output_dir"})
    return "victim-" + _digest({"config": vcfg, "dataset": ds.fingerprint,
                                "backbone": str(resolve_backbone(cfg.model.backbone))})


def _attack_material(aug: AugmentConfig) -> dict[str, Any]:
    return {"recipe": aug.recipe, "max_modify_rate": aug.max_modify_rate, "query_budget": aug.query_budget,
            "max_candidates": aug.max_candidates}


def pool_size(aug: AugmentConfig, n_train: int) -> int:
    return math.ceil(aug.effective_pool_ratio * n_train)


def pool_key(cfg: TrialConfig, ds: Dataset, n_train: int) -> str:
    aug = cfg.augment or AugmentConfig()
    return "ada-" + _digest({"victim": victim_key(cfg, ds), "attack": _attack_material(aug),
                             "pool": pool_size(aug, n_train), "seed": cfg.seed,
                             "max_length": cfg.data.max_length})


# --------------------------------------------------------------------------------------------------
# default callables: this process (attacks may use the actor pool)


def train_victim_here(vcfg: TrialConfig, out: Path) -> Path:
    from distat.training import run_trial

    result = run_trial(vcfg, out)
    if result.diverged or result.checkpoint is None:
        raise RuntimeError("the ADA victim diverged while training")
    return result.checkpoint


def attack_here(checkpoint: Path, examples: list[Any], job: Any, aug: AugmentConfig) -> list[Any]:
    from distat.attacks.evaluate import robust_evaluate
    from distat.models import load_classifier, load_tokenizer

    num_labels = int(json.loads((checkpoint / "config.json").read_text()).get("num_labels", 2))
    model = load_classifier(checkpoint, num_labels).eval()
    _, records = robust_evaluate(model, load_tokenizer(checkpoint), examples, job, actors=aug.actors,
                                 gpus_per_actor=aug.gpus_per_actor)
    return records


# --------------------------------------------------------------------------------------------------
# generation


class Generator:
    """Builds (or finds) the victim, the ADA pool and the static set of one trial configuration."""

    def __init__(self, cache: FolderCache, resources: Any, *, train_victim: TrainVictim = train_victim_here,
                 attack: Attack = attack_here, timeout: float | None = None) -> None:
        self.cache = cache
        self.resources = resources
        self.train_victim = train_victim
        self.attack = attack
        self.timeout = timeout

    def _job(self, cfg: TrialConfig, ds: Dataset) -> Any:
        from distat.attacks.recipes import AttackOptions
        from distat.attacks.runner import AttackJob

        aug = cfg.augment or AugmentConfig()
        options = AttackOptions(max_candidates=aug.max_candidates, max_modify_rate=aug.max_modify_rate,
                                query_budget=aug.query_budget)
        return AttackJob(recipe=aug.recipe, resources=self.resources, options=options, text_fields=ds.text_fields,
                         max_length=cfg.data.max_length, seed=cfg.seed)

    def victim(self, cfg: TrialConfig, ds: Dataset) -> Path:
        aug = cfg.augment or AugmentConfig()
        if aug.victim.checkpoint:
            return Path(aug.victim.checkpoint).resolve()
        key = victim_key(cfg, ds)

        def build(tmp: Path) -> dict[str, Any]:
            t0 = time.perf_counter()
            ckpt = self.train_victim(victim_config(cfg).model_copy(update={"output_dir": str(tmp)}), tmp)
            return {"checkpoint": str(Path(ckpt).resolve().relative_to(tmp.resolve())),
                    "seconds": round(time.perf_counter() - t0, 2)}

        entry = self.cache.get_or_build(key, build, timeout=self.timeout,
                                        on_wait=lambda: log.info("waiting for the ADA victim %s", key))
        return entry / _info(entry)["checkpoint"]

    def pool(self, cfg: TrialConfig, ds: Dataset, train: Split) -> Path:
        """The ADA pool entry for ``cfg`` (generated here unless some process did or is doing it)."""
        from distat.attacks.evaluate import select_examples
        from distat.attacks.metrics import write_records_csv

        aug = cfg.augment or AugmentConfig()
        n_pool = pool_size(aug, len(train))
        key = pool_key(cfg, ds, len(train))

        def build(tmp: Path) -> dict[str, Any]:
            victim = self.victim(cfg, ds)
            t0 = time.perf_counter()
            examples = select_examples(train, n_pool, seed=cfg.seed)
            records = self.attack(victim, examples, self._job(cfg, ds), aug)
            write_records_csv(records, tmp / "records.csv")
            return {"n_train": len(train), "n_pool": n_pool, "succeeded": sum(r.status == "success" for r in records),
                    "attack_seconds": round(time.perf_counter() - t0, 2), "victim": str(victim),
                    "recipe": aug.recipe}

        return self.cache.get_or_build(key, build, timeout=self.timeout,
                                       on_wait=lambda: log.info("waiting for the ADA pool %s", key))

    def static_set(self, cfg: TrialConfig, ds: Dataset, examples: list[Any], job: Any) -> list[Any]:
        """The victim's attack records of ``examples`` (the subset targeted evaluation attacks, with the same
        ``job``): the static set every trial of a search is scored on."""
        from distat.attacks.metrics import read_records_csv, write_records_csv

        material = {"recipe": job.recipe, "options": job.options, "seed": job.seed, "max_length": job.max_length,
                    "examples": [(e.index, e.text, e.other_text, e.label) for e in examples]}
        key = "static-" + _digest({"victim": victim_key(cfg, ds), "attack": material})

        def build(tmp: Path) -> dict[str, Any]:
            victim = self.victim(cfg, ds)
            records = self.attack(victim, examples, job, cfg.augment or AugmentConfig())
            write_records_csv(records, tmp / "records.csv")
            return {"n": len(examples), "succeeded": sum(r.status == "success" for r in records),
                    "victim": str(victim)}

        return read_records_csv(self.cache.get_or_build(key, build, timeout=self.timeout) / "records.csv")


def _rows(records: Sequence[Any], pairs: bool, source: str) -> Split:
    """The successful adversarial examples of ``records`` as training rows with their source rows' labels."""
    chosen = [r for r in records if r.status == "success" and r.perturbed_text]
    if pairs:
        return Split(name="ada", text_a=[r.other_text or "" for r in chosen], text_b=[r.perturbed_text for r in chosen],
                     labels=[r.label for r in chosen], source=source)
    return Split(name="ada", text_a=[r.perturbed_text for r in chosen], text_b=None, labels=[r.label for r in chosen],
                 source=source)


def augmentation(pool: Path, ratio: float, n_train: int, pairs: bool) -> Split:
    """The successful adversarial examples among the first ⌈ratio·n_train⌉ attacked rows of ``pool``."""
    from distat.attacks.metrics import read_records_csv

    limit = math.ceil(ratio * n_train)
    info = _info(pool)
    if limit > info["n_pool"]:
        raise ValueError(f"augmentation ratio {ratio} needs {limit} attacked rows; the pool has {info['n_pool']}")
    records = [r for r in read_records_csv(pool / "records.csv") if r.index < limit]
    return _rows(records, pairs, f"ADA pool {pool.name}")


def iterative_augmenter(cfg: TrialConfig, resources: Any, out_dir: Path) -> Callable[[int, Any, Any], Split]:
    """For :func:`distat.training.run_trial`'s ``augment_fn``: after epoch e, attack ``iterative_n`` training
    rows (seeded by the trial seed and e) against the model being trained, in this process, and return the
    successful examples. Under DDP rank 0 attacks and writes ``<out_dir>/iterative/epoch_NNN.jsonl``; every
    rank reads that file after a barrier, so all train on the same rows. An epoch's file that already exists
    (a restarted worker) is reused rather than regenerated."""
    import torch.distributed as dist

    from distat.attacks.evaluate import select_examples
    from distat.attacks.recipes import AttackOptions
    from distat.attacks.runner import AttackJob, AttackRunner
    from distat.data import read_rows
    from distat.training import load_splits

    aug = cfg.augment or AugmentConfig()
    ds, train, _ = load_splits(cfg)
    job = AttackJob(recipe=aug.recipe, resources=resources, text_fields=ds.text_fields, max_length=cfg.data.max_length,
                    options=AttackOptions(max_candidates=aug.max_candidates, max_modify_rate=aug.max_modify_rate,
                                          query_budget=aug.query_budget), seed=cfg.seed)

    def augment(epoch: int, module: Any, tokenizer: Any) -> Split:
        distributed = dist.is_available() and dist.is_initialized()
        path = out_dir / "iterative" / f"epoch_{epoch:03d}.jsonl"
        if (not distributed or dist.get_rank() == 0) and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            examples = select_examples(train, aug.iterative_n, seed=cfg.seed * 1000 + epoch)
            module.eval()
            records = AttackRunner(job, module, tokenizer).run(examples)
            write_rows(_rows(records, ds.is_pair, f"iterative ADA epoch {epoch}"), path)
            log.info("iterative ADA after epoch %d: %d of %d attacks succeeded", epoch,
                     sum(r.status == "success" for r in records), len(records))
        if distributed:
            dist.barrier()
        return read_rows(path, train.name, ds.num_labels)

    return augment


def prepare_trial(cfg: TrialConfig, trial_dir: Path, generator: Generator) -> tuple[TrialConfig, dict[str, Any]]:
    """``cfg`` with ``data.augment_file`` pointing at this trial's adversarial rows (written into
    ``trial_dir``), and what was added. A config without ``augment`` (or ratio 0) comes back unchanged."""
    from distat.training import load_splits

    aug = cfg.augment
    if aug is None or aug.ratio == 0:
        return cfg, {}
    ds, train, _ = load_splits(cfg)
    if not aug.cache:  # the "fresh" baseline: this trial's own victim and just the rows it needs
        generator = Generator(FolderCache(trial_dir / "ada_private"), generator.resources,
                              train_victim=generator.train_victim, attack=generator.attack)
        cfg = cfg.model_copy(update={"augment": aug.model_copy(update={"pool_ratio": None})})
    pool = generator.pool(cfg, ds, train)
    rows = augmentation(pool, aug.ratio, len(train), ds.is_pair)
    path = write_rows(rows, trial_dir / AUGMENT_FILE)
    data = cfg.data.model_copy(update={"augment_file": str(path)})
    return cfg.model_copy(update={"data": data}), {"ada_examples": float(len(rows)), "ada_pool": pool.name}


def static_outcomes(module: Any, tokenizer: Any, records: Sequence[Any], *, max_length: int, batch_size: int = 64,
                    device: Any = None) -> list[bool]:
    """Per example of the static set (in ``records``' order): whether ``module`` classifies it correctly as the
    victim's attack left it."""
    import torch

    from distat.data import encode, iter_batches

    pairs = any(r.other_text is not None for r in records)
    texts = [r.perturbed_text if r.status == "success" and r.perturbed_text else r.text for r in records]
    split = Split(name="static", text_a=[r.other_text or "" for r in records] if pairs else texts,
                  text_b=texts if pairs else None, labels=[r.label for r in records], source="static")
    device = device or next(module.parameters()).device
    encoded = encode(split, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    correct: list[bool] = []
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for batch in iter_batches(encoded, batch_size, pad_token_id=pad_id):
            labels = batch.pop("labels")
            if getattr(module.config, "type_vocab_size", 0) <= 1:
                batch.pop("token_type_ids", None)
            logits = module(**{k: v.to(device) for k, v in batch.items()}).logits
            correct.extend((logits.argmax(-1).cpu() == labels).tolist())
    module.train(was_training)
    return correct
