"""How parallel are PGD's ascent increments? The quantity behind adaptive PGD's effect.

Adaptive AT trains on x₀ + β·Σᵢ wᵢδᵢ with w on the simplex; PGD's point is x₀ + Σᵢ δᵢ, the weighting wᵢ = 1/β
(β = k). When the k increments δᵢ point the same way, every simplex weighting gives nearly the same point, and
adaptive PGD trains the model PGD trains. This script runs PGD's ascent (the trial's own settings: α, k, norm,
random start) from a trained checkpoint on the first batches of its training rows, in eval mode, and reports the
mean and minimum over batches of the examples' mean pairwise cosine between increments, and the relative
distance between PGD's point and the farthest simplex corner's (``β·δ_j`` for the j farthest from ``Σᵢ δᵢ``).
The last stdout line is JSON.

    .venv/bin/python benchmarks/pgd_increments.py <checkpoint folder> [--batches 4] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint folder of a pgd or adaptive_pgd trial")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    from distat import data as data_mod
    from distat.methods import build, parse_settings, settings_class
    from distat.methods.base import StepContext, embeds
    from distat.training import build_parts, checkpoint_config

    torch.set_num_threads(1)
    ckpt = Path(args.checkpoint)
    cfg = checkpoint_config(ckpt)
    method_cfg = cfg.method
    base = getattr(method_cfg, "base", None)
    if isinstance(base, str):  # adaptive AT: its base method with the shared knobs (α, k, norm, start)
        fields = settings_class(base).model_fields
        method_cfg = parse_settings({"name": base, **{k: v for k, v in method_cfg.model_dump().items()
                                                      if k in fields and k != "name"}})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": str(ckpt)})})
    parts = build_parts(cfg, torch.device("cpu"))
    module = parts.module.eval()
    method = build(method_cfg)
    ctx = StepContext(model=module, module=module, backward=lambda loss, sync=True: loss.backward())
    pad = parts.tokenizer.pad_token_id or 0
    torch.manual_seed(0)
    cosines, spreads = [], []
    order = list(range(len(parts.train)))
    for b, batch in enumerate(data_mod.iter_batches(parts.train, args.batch_size, order=order, pad_token_id=pad)):
        if b == args.batches:
            break
        x = embeds(module, batch).detach()
        inc = [d.flatten(1) for d in method.trajectory(ctx, batch, x).increments()]
        pairs = [torch.nn.functional.cosine_similarity(inc[i], inc[j], dim=1).mean().item()
                 for i, j in itertools.combinations(range(len(inc)), 2)]
        cosines.append(sum(pairs) / len(pairs))
        total = torch.stack(inc).sum(0)
        corners = [(len(inc) * d - total).norm(dim=1) / total.norm(dim=1) for d in inc]
        spreads.append(torch.stack(corners).max(0).values.mean().item())
    result = {"method": method_cfg.label, "k": len(inc), "batches": len(cosines),
              "mean_pairwise_cosine": round(sum(cosines) / len(cosines), 4), "min_batch_cosine": round(min(cosines), 4),
              "max_corner_distance": round(sum(spreads) / len(spreads), 4)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
