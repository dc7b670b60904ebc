"""Where an attacked example's time goes, per recipe, on a lower-cased and a cased dataset.

Each recipe (distat's offline TextFooler, TextBugger, PWWS and BAE) attacks the same seeded test examples of
shared SST-2 (lower-cased sentences) and AG News (cased news text) in this process, against the packaged MiniLM
fine-tuned briefly on that dataset's train rows. The parts of TextAttack's pipeline are timed exclusively (a
part nested in another is taken out of the outer one):

- ``victim``: the goal function's model calls (tokenising and the forward pass of the attacked model);
- ``sentence_encoder``: the sentence encoder of the similarity constraint (TextFooler, TextBugger, BAE);
- ``pos_tagger``: spaCy's tagger behind the part-of-speech constraint (cache misses only; hits are free);
- ``mlm``: the masked LM's forward passes (BAE);
- ``candidates``: the transformation (word-vector neighbours, WordNet, character edits, the MLM's post-processing)
  and the pre-transformation constraints, apart from the MLM;
- ``other_constraints``: the remaining constraints' own work (the word-embedding distance, the similarity
  constraint's windowing and comparisons, the part-of-speech constraint's bookkeeping);
- ``search``: everything else — the search method, result objects, TextAttack's caches: Python overhead.

Also counted: the sentences the encoder was asked for and how many were distinct (what a cache in one attack
could save), and queries per example. Writes ``benchmarks/results/attack_profile-<date>.md``; the last stdout
line is JSON: ``{"<dataset>/<recipe>": {"s_per_attacked": ..., "<part>": share, ...}, ...}``.

    .venv/bin/python benchmarks/attack_profile.py [--n 10] [--recipes textfooler pwws] [--datasets sst2 agnews]

Needs the offline resources: `.venv/bin/distat resources build`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import shared_data

PARTS = ("victim", "sentence_encoder", "pos_tagger", "mlm", "candidates", "other_constraints", "search")
REPO = Path(__file__).resolve().parents[1]


class Stopwatch:
    """Exclusive time per part: entering a part pauses the one it is nested in."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [part, started]

    def enter(self, part: str) -> None:
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.totals[outer[0]] += now - outer[1]
        self._stack.append([part, now])

    def exit(self) -> None:
        now = time.perf_counter()
        part, started = self._stack.pop()
        self.totals[part] += now - started
        if self._stack:
            self._stack[-1][1] = now

    def wrap(self, obj: Any, attr: str, part: str, before: Callable[..., None] | None = None) -> None:
        """Time ``obj.attr`` (an instance attribute shadowing the method) as ``part``."""
        original = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before(*args, **kwargs)
            self.enter(part)
            try:
                return original(*args, **kwargs)
            finally:
                self.exit()

        setattr(obj, attr, timed)

    def hook(self, module: Any, part: str) -> None:
        """Time a torch module's forward passes as ``part``."""
        module.register_forward_pre_hook(lambda *_: self.enter(part))
        module.register_forward_hook(lambda *_: self.exit())


def victim(dataset: str, train_rows: int) -> tuple[Any, Any, float]:
    """The packaged MiniLM fine-tuned for one epoch on ``train_rows`` rows of ``dataset``."""
    from distat.config import parse_trial_config
    from distat.training import run_trial

    cfg = parse_trial_config({
        "seed": 13,
        "data": {"path": str(shared_data() / dataset), "max_train_examples": train_rows, "max_dev_examples": 200,
                 "max_length": 128},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-4, "group_by_length": True},
        "output_dir": tempfile.mkdtemp(prefix="distat-profile-"),
    })
    result = run_trial(cfg)
    return result.model.eval(), result.tokenizer, result.metrics["clean_acc"]


def instrument(runner: Any, watch: Stopwatch, texts: Counter) -> None:
    """Shadow the timed parts of ``runner.attack`` with timed wrappers (instance attributes)."""
    from distat.attacks.textattack_parts import SentenceSimilarity, SpacyPartOfSpeech

    attack = runner.attack
    watch.wrap(attack.goal_function, "_call_model_uncached", "victim")
    watch.wrap(attack, "_get_transformations_uncached", "candidates")
    language_model = getattr(attack.transformation, "_language_model", None)
    if language_model is not None:
        watch.hook(language_model, "mlm")
    for constraint in attack.constraints:
        watch.wrap(constraint, "call_many", "other_constraints")
        if isinstance(constraint, SentenceSimilarity):
            watch.wrap(constraint, "encode", "sentence_encoder", before=lambda sentences: texts.update(sentences))
        if isinstance(constraint, SpacyPartOfSpeech):
            watch.wrap(constraint, "_get_pos", "pos_tagger")


def profile(dataset: str, recipe: str, model: Any, tokenizer: Any, n: int, paths: Any) -> dict[str, Any]:
    from distat.attacks.evaluate import select_examples
    from distat.attacks.recipes import AttackOptions
    from distat.attacks.runner import AttackJob, AttackRunner
    from distat.data import load_dataset

    ds = load_dataset(shared_data() / dataset, splits=["test"])
    examples = select_examples(ds.split("test"), n, seed=0)
    job = AttackJob(recipe=recipe, resources=paths, options=AttackOptions(max_modify_rate=0.3),
                    text_fields=ds.text_fields, max_length=128)
    runner = AttackRunner(job, model, tokenizer)
    watch, texts = Stopwatch(), Counter()
    instrument(runner, watch, texts)
    records = []
    for ex in examples:
        watch.enter("search")
        try:
            records.append(runner.attack_one(ex))
        finally:
            watch.exit()
    total = sum(watch.totals.values())
    attacked = [r for r in records if r.status != "skipped"]
    out: dict[str, Any] = {
        "examples": len(records), "attacked": len(attacked),
        "s_per_attacked": total / max(1, len(attacked)),
        "queries_per_attacked": sum(r.num_queries for r in attacked) / max(1, len(attacked)),
        "encoder_sentences": sum(texts.values()), "encoder_distinct": len(texts),
    }
    out.update({part: watch.totals.get(part, 0.0) / total if total else 0.0 for part in PARTS})
    return out


def main(argv: list[str] | None = None) -> int:
    from distat.attacks.recipes import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="test examples per dataset (the same for every recipe)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--datasets", nargs="+", default=["sst2", "agnews"])
    parser.add_argument("--train-rows", type=int, default=800)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    import torch

    from distat import resources
    from distat.attacks.recipes import check_recipe
    from distat.errors import DistatError

    torch.set_num_threads(1)  # as in an attack actor with one CPU
    paths = resources.resolve(resources.cache_dir())
    recipes = []
    for recipe in args.recipes:  # a recipe without its resources is left out with one line (BAE needs the MLM)
        try:
            check_recipe(resources.cache_dir(), None, recipe)
            recipes.append(recipe)
        except DistatError as exc:
            print(f"attack_profile: skipping {recipe}: {exc}", file=sys.stderr)
    args.recipes = recipes
    result: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, float] = {}
    for dataset in args.datasets:
        model, tokenizer, accuracy[dataset] = victim(dataset, args.train_rows)
        for recipe in args.recipes:
            key = f"{dataset}/{recipe}"
            result[key] = profile(dataset, recipe, model, tokenizer, args.n, paths)
            print(f"{key}: {json.dumps({k: round(v, 3) for k, v in result[key].items()})}", file=sys.stderr)
    today = datetime.date.today().isoformat()
    lines = [f"# attack_profile, {today}", "",
             f"- {args.n} test examples per dataset, one thread; victims: MiniLM, 1 epoch on {args.train_rows} "
             "train rows (dev accuracy " + ", ".join(f"{d} {a:.3f}" for d, a in accuracy.items()) + ")",
             "- shares of the attack's time (exclusive); `encoder distinct`: distinct sentences among those encoded",
             "", "| dataset/recipe | attacked | s / attacked | queries | " + " | ".join(PARTS)
             + " | encoder sentences (distinct) |", "|:--|--:|--:|--:|" + "--:|" * len(PARTS) + "--:|"]
    for key, row in result.items():
        lines.append(f"| {key} | {row['attacked']}/{row['examples']} | {row['s_per_attacked']:.2f} | "
                     f"{row['queries_per_attacked']:.0f} | " + " | ".join(f"{100 * row[p]:.0f}%" for p in PARTS)
                     + f" | {row['encoder_sentences']} ({row['encoder_distinct']}) |")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"attack_profile-{today}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps({k: {m: round(v, 4) if isinstance(v, float) else v for m, v in row.items()}
                      for k, row in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
