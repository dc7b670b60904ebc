"""Attack a list of examples with one victim model, sequentially, deterministically.

:class:`AttackJob` is everything needed to rebuild the victim and the recipe anywhere (a Ray actor on
another node included): the model's config and weights, its tokenizer, the recipe and its resources.
:class:`AttackRunner` builds the model and the recipe once, then attacks examples one by one; each
example's RNG is seeded from (job seed, example index), so a sharded run returns exactly what a
sequential run returns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distat.attacks.metrics import AttackRecord
from distat.attacks.recipes import AttackOptions, build_attack
from distat.attacks.work_cache import ExampleWork, WorkCache, WorkCacheRef, example_digest
from distat.resources import ResourcePaths


@dataclass(frozen=True)
class Example:
    index: int  # position in the evaluated subset: results are ordered by it
    text: str  # the perturbable side
    label: int
    other_text: str | None = None  # the fixed side of a pair (``question``)


@dataclass(frozen=True)
class AttackJob:
    recipe: str
    resources: ResourcePaths
    options: AttackOptions = field(default_factory=AttackOptions)
    text_fields: tuple[str, ...] = ("sentence",)
    max_length: int = 128
    seed: int = 0
    model_batch_size: int = 32  # texts per victim forward and per sentence-encoder forward (cosmetic: not in the spec)
    work_cache: WorkCacheRef | None = None  # victim-independent work shared with other victims' attacks


def example_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % 2**31


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The victim's weights on the CPU, for shipping to actors."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def rebuild_model(config: Any, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(state)
    return model.to(device).eval()


class AttackRunner:
    def __init__(self, job: AttackJob, model: nn.Module, tokenizer: Any) -> None:
        from distat.resources import import_textattack

        self.ta = import_textattack(job.resources.wordnet)
        from distat.attacks.textattack_parts import ClassifierWrapper

        self.job = job
        self.wrapper = ClassifierWrapper(model, tokenizer, max_length=job.max_length,
                                         batch_size=job.model_batch_size)
        self.attack = build_attack(job.recipe, self.wrapper, job.resources, job.options, job.text_fields)
        from distat.attacks.textattack_parts import SentenceSimilarity, SpacyPartOfSpeech

        self.encoders = [c for c in self.attack.constraints if isinstance(c, SentenceSimilarity)]
        self.taggers = [c for c in self.attack.constraints if isinstance(c, SpacyPartOfSpeech)]
        self.attack.goal_function.batch_size = job.model_batch_size  # TextAttack's chunks of the victim's queries
        for encoder in self.encoders:
            encoder.batch_size = job.model_batch_size
        self.cache = WorkCache(job.work_cache) if job.work_cache is not None else None

    def _attacked_text(self, ex: Example) -> Any:
        from collections import OrderedDict

        if ex.other_text is None:
            return self.ta.shared.AttackedText(ex.text)
        first, second = self.job.text_fields[0], self.job.text_fields[-1]
        return self.ta.shared.AttackedText(OrderedDict([(first, ex.other_text), (second, ex.text)]))

    def attack_one(self, ex: Example) -> AttackRecord:
        digest = example_digest(ex.index, ex.text, ex.other_text, ex.label)
        known = self.cache.load(digest) if self.cache is not None else ExampleWork()
        for encoder in self.encoders:
            encoder.prime(known.embeddings)
        for tagger in self.taggers:
            tagger.prime(known.tags)
        s = example_seed(self.job.seed, ex.index)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        result = self.attack.attack(self._attacked_text(ex), ex.label)
        if self.cache is not None:
            new = ExampleWork()
            for encoder in self.encoders:
                new.embeddings.update(encoder.take_computed())
            for tagger in self.taggers:
                new.tags.update(tagger.take_computed())
            self.cache.save(digest, new)
        return to_record(self.ta, ex, result, self.job.text_fields[-1])

    def cache_stats(self) -> dict[str, int]:
        """Sentence-encoder texts found in the memo or the work cache (hits) and embedded (misses)."""
        return {"encoder_hits": sum(e.hits for e in self.encoders),
                "encoder_misses": sum(e.misses for e in self.encoders)}

    def run(self, examples: Sequence[Example], progress: Callable[[AttackRecord], None] | None = None
            ) -> list[AttackRecord]:
        out = []
        for ex in examples:
            record = self.attack_one(ex)
            out.append(record)
            if progress is not None:
                progress(record)
        return out


def to_record(ta: Any, ex: Example, result: Any, perturbed_column: str) -> AttackRecord:
    results = ta.attack_results
    original = result.original_result.attacked_text
    perturbed = result.perturbed_result.attacked_text
    if isinstance(result, results.SkippedAttackResult):
        status = "skipped"
    elif isinstance(result, results.SuccessfulAttackResult):
        status = "success"
    else:
        status = "failed"
    changed = original.all_words_diff(perturbed) if status == "success" else set()
    words_total = len(ta.shared.AttackedText(ex.text).words)
    perturbed_text = perturbed.column_labels and perturbed._text_input.get(perturbed_column, perturbed.text)
    return AttackRecord(
        index=ex.index, text=ex.text, other_text=ex.other_text, label=ex.label,
        perturbed_text=perturbed_text if status == "success" else None,
        original_pred=int(result.original_result.output),
        perturbed_pred=int(result.perturbed_result.output) if status != "skipped" else None,
        status=status, num_queries=int(result.perturbed_result.num_queries),
        words_perturbed=len(changed), words_total=words_total,
    )
