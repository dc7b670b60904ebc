"""TA-VAT: token-aware virtual adversarial training (Li & Qiu, AAAI 2021).

Two changes to embedding-space PGD: (1) perturbations are normalised and bounded per token rather than
per sentence (a token-level ball), and (2) each token's perturbation starts from the one found for the
same token id in earlier batches — a global (vocabulary × hidden) table of accumulated perturbations —
instead of from scratch. Tokens never seen start from the usual random init.

As in the adaptive-AT paper, the model is trained at the final point (β defaults to k), so TA-VAT can be
wrapped by adaptive AT exactly like PGD. TextDefender's implementation instead accumulates gradients
FreeLB-style over the steps; distat follows the adaptive-AT paper's formulation.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from distat.methods.base import Batch
from distat.methods.pgd import KStepMethod, KStepSettings


class TAVATSettings(KStepSettings):
    name: Literal["tavat"] = "tavat"


class TAVAT(KStepMethod):
    name = "tavat"
    settings = TAVATSettings
    token_level = True

    def __init__(self, cfg: KStepSettings) -> None:
        super().__init__(cfg)
        self.table: torch.Tensor | None = None  # (vocab, hidden) accumulated perturbations
        self.seen: torch.Tensor | None = None  # (vocab,) bool

    def setup(self, module: nn.Module) -> None:
        weight = module.get_input_embeddings().weight
        if self.table is None or self.table.shape != weight.shape:
            self.table = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            self.seen = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)

    def _ensure(self, x0: torch.Tensor, vocab: int) -> None:
        if self.table is None:
            self.table = torch.zeros(vocab, x0.shape[-1], dtype=torch.float32, device=x0.device)
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=x0.device)

    def initial_delta(self, batch: Batch, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = batch["input_ids"]
        self._ensure(x0, int(ids.max()) + 1)
        assert self.table is not None and self.seen is not None
        random = self.pert.init(x0, mask)
        remembered = self.table[ids]
        if self.pert.init_mag > 0:  # keep remembered starts inside the init ball too
            n = remembered.norm(dim=-1, keepdim=True)
            remembered = remembered * torch.clamp(self.pert.init_mag / (n + 1e-12), max=1.0)
        seen = self.seen[ids].unsqueeze(-1)
        return torch.where(seen, remembered, random) * mask

    @torch.no_grad()
    def observe(self, batch: Batch, delta: torch.Tensor) -> None:
        assert self.table is not None and self.seen is not None
        real = batch["attention_mask"].bool()
        ids = batch["input_ids"][real]
        vecs = delta.detach().float()[real]
        # average over the occurrences of each id in this batch, then overwrite those rows
        uniq, inverse = torch.unique(ids, return_inverse=True)
        sums = torch.zeros(len(uniq), vecs.shape[-1], device=vecs.device).index_add_(0, inverse, vecs)
        counts = torch.bincount(inverse, minlength=len(uniq)).to(vecs.dtype).unsqueeze(-1)
        self.table[uniq] = sums / counts
        self.seen[uniq] = True

    def state_dict(self) -> dict[str, Any]:
        if self.table is None:
            return {}
        return {"table": self.table.cpu(), "seen": self.seen.cpu()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.table = self.seen = None
            return
        device = self.table.device if self.table is not None else torch.device("cpu")
        self.table = state["table"].to(device)
        self.seen = state["seen"].to(device)
