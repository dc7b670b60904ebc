"""Cost of one optimiser step per AT method relative to standard fine-tuning.

MiniLM (the packaged all-MiniLM-L6-v2), batch 16 × 64 tokens of real SST-2 sentences, k = 5 for every
k-step method. All methods are timed in one run, interleaved round by round so that machine drift hits
them alike; the median step time of each is divided by standard fine-tuning's. The last line is JSON.

The methods added for the adaptive-AT paper's tables run at their own defaults, each next to the floor its
algorithm cannot go below — the same ascent without the method's own additions:

- InfoBERT (k = 3, FreeLB-style) next to FreeLB with k = 3 (``infobert_floor_freelb3``);
- SMART (one ascent step on a symmetric KL, the clean and perturbed batch in one doubled forward, one
  forward of the momentum anchor) next to TRADES with k = 1 (``smart_floor_trades1``: the same ascent and
  doubled batch, without the anchor);
- Flooding-X (auto b: the class-level gradient accordance measured every 10 steps, two per-class
  backwards each) next to standard fine-tuning (1.0: flooding itself is free).

    .venv/bin/python benchmarks/at_step_cost.py [--rounds 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from distat import methods
from distat.data import load_dataset
from distat.methods.base import StepContext
from distat.models import load_classifier, load_tokenizer, resolve_backbone
from distat.training import make_optimizer

from common import report, shared_data

BATCH, TOKENS, K = 16, 64, 5
METHODS = {
    "standard": {"name": "standard"},
    "fgm": {"name": "fgm"},
    "pgd5": {"name": "pgd", "adv_steps": K},
    "adaptive_pgd5": {"name": "adaptive_pgd", "adv_steps": K},
    "freelb5": {"name": "freelb", "adv_steps": K},
    "adaptive_freelb5": {"name": "adaptive_freelb", "adv_steps": K},
    "tavat5": {"name": "tavat", "adv_steps": K},
    "trades5": {"name": "trades", "adv_steps": K},
    "adaptive_tavat5": {"name": "adaptive_tavat", "adv_steps": K},
    "infobert": {"name": "infobert"},
    "freelb3": {"name": "freelb", "adv_steps": 3},
    "smart": {"name": "smart"},
    "trades1": {"name": "trades", "adv_steps": 1},
    "flooding": {"name": "flooding"},
}



def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    split = load_dataset(shared_data() / "sst2", splits=["train"]).split("train")
    texts, pool = [], iter(split.text_a)
    while len(texts) < BATCH:  # SST-2 sentences are short: join consecutive ones to fill 64 tokens
        text = next(pool)
        while len(tokenizer.tokenize(text)) < TOKENS:
            text = f"{text} {next(pool)}"
        texts.append(text)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")
    batch = dict(enc)
    batch["labels"] = torch.tensor(split.labels[:BATCH])
    return batch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_backbone("default")
    tokenizer = load_tokenizer(path)
    model = load_classifier(path, num_labels=2)
    model.train()
    batch = fixed_batch(tokenizer)
    assert batch["input_ids"].shape == (BATCH, TOKENS)
    from distat.config import TrialConfig

    opt = make_optimizer(model, TrialConfig())
    ctx = StepContext.plain(model)
    built = {}
    for key, spec in METHODS.items():
        m = methods.build(methods.parse_settings(spec))
        m.setup(model)
        built[key] = m

    steps = {"n": 0}

    def one_step(m) -> float:
        t0 = time.perf_counter()
        ctx.step = steps["n"]  # methods that act every n steps (Flooding-X's accordance) see a moving counter
        m.train_step(ctx, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in built}
    for r in range(args.warmup + args.rounds):
        steps["n"] = r
        for key, m in built.items():
            dt = one_step(m)
            if r >= args.warmup:
                times[key].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>18}: median {v * 1000:8.1f} ms/step  ({v / med['standard']:.2f}x standard)", file=sys.stderr)
    result = {
        "pgd5_vs_standard": med["pgd5"] / med["standard"],
        "adaptive_pgd_vs_pgd": med["adaptive_pgd5"] / med["pgd5"],
        "adaptive_freelb_vs_freelb": med["adaptive_freelb5"] / med["freelb5"],
        "freelb5_vs_standard": med["freelb5"] / med["standard"],
        "tavat5_vs_standard": med["tavat5"] / med["standard"],
        "trades_vs_standard": med["trades5"] / med["standard"],
        "fgm_vs_standard": med["fgm"] / med["standard"],
        "adaptive_tavat_vs_tavat": med["adaptive_tavat5"] / med["tavat5"],
        "infobert_vs_standard": med["infobert"] / med["standard"],
        "infobert_floor_freelb3_vs_standard": med["freelb3"] / med["standard"],
        "smart_vs_standard": med["smart"] / med["standard"],
        "smart_floor_trades1_vs_standard": med["trades1"] / med["standard"],
        "flooding_vs_standard": med["flooding"] / med["standard"],
        "standard_ms": med["standard"] * 1000,
        "batch": [BATCH, TOKENS], "k": K, "rounds": args.rounds, "threads": torch.get_num_threads(),
    }
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
