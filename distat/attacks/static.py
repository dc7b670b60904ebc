"""Static adversarial evaluation: a classifier's accuracy on a saved adversarial set.

The sets are ordinary labelled splits: AdvGLUE (``../shared/data/advglue/sst2.tsv`` and ``qnli.tsv``,
human-validated adversarial examples) or one written by
:func:`distat.attacks.metrics.export_adversarial_tsv` from the successful attacks on a victim model (the
static-attack evaluation of the MixADA paper: adversarial examples of one model, replayed on another).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distat.attacks.metrics import wilson_interval
from distat.data import Split, encode, load_dataset
from distat.errors import DataError
from distat.training import evaluate

__all__ = ["load_static_set", "static_eval"]

_EXTS = (".tsv", ".csv", ".jsonl", ".parquet")


def load_static_set(
    path: str | os.PathLike[str],
    split: str | None = None,
    *,
    num_labels: int | None = None,
    text_fields: tuple[str, ...] | None = None,
) -> Split:
    """A saved adversarial set as a :class:`~distat.data.Split`.

    ``path`` is either one split file (``advglue/sst2.tsv``: loaded as split ``sst2`` of its folder) or a
    dataset folder, with ``split`` naming the split (optional when the folder holds just one).
    ``num_labels`` checks the label range when the folder's ``dataset.json`` names no labels (AdvGLUE's does
    not: pass the model's number of labels); without it the count is inferred from the data.
    """
    target = Path(os.path.expanduser(os.fspath(path)))
    if target.is_file():
        if target.suffix not in _EXTS:
            raise DataError(f"{target}: a static set must be a {', '.join(_EXTS)} file or a dataset folder")
        if split is not None and split != target.stem:
            raise DataError(f"{target} is split {target.stem!r}, not {split!r}; pass the folder to choose a split")
        folder, name = target.parent, target.stem
    elif target.is_dir():
        folder, name = target, split
        if name is None:
            try:
                stems = sorted({p.stem for p in folder.iterdir()
                                if p.suffix in _EXTS and p.is_file() and not p.name.startswith(".")})
            except OSError as e:
                raise DataError(f"cannot list {folder}: {e.strerror or e}") from None
            if len(stems) > 1:
                raise DataError(f"{folder} holds splits {', '.join(stems)}; pick one with split=")
    else:
        raise DataError(f"static adversarial set {target} does not exist (give a split file or a dataset folder)")
    dataset = load_dataset(folder, splits=None if name is None else [name], text_fields=text_fields,
                           num_labels=num_labels)
    if name is None:
        if len(dataset.splits) != 1:
            raise DataError(f"{folder} holds splits {', '.join(dataset.splits)}; pick one with split=")
        name = next(iter(dataset.splits))
    return dataset.split(name)


def static_eval(
    model: nn.Module,
    tokenizer: Any,
    split: Split,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``split`` with a Wilson 95% interval.

    Returns ``static_acc``, ``static_acc_lo``, ``static_acc_hi`` and ``static_n``. Runs in eval mode without
    gradients (the model's train/eval mode is restored afterwards); texts are truncated to ``max_length``
    tokens (capped at the tokenizer's limit). ``device`` defaults to the model's; if given, the model is
    moved there.
    """
    num_outputs = getattr(getattr(model, "config", None), "num_labels", None)
    if num_outputs is not None and split.labels and max(split.labels) >= num_outputs:
        raise DataError(f"{split.source}: label {max(split.labels)} does not fit a model with "
                        f"{num_outputs} outputs")
    if device is None:
        param = next(model.parameters(), None)
        target = param.device if param is not None else torch.device("cpu")
    else:
        target = torch.device(device)
        model.to(target)
    limit = getattr(tokenizer, "model_max_length", None) or max_length
    encoded = encode(split, tokenizer, min(max_length, limit))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(split)
    acc = evaluate(model, encoded, batch_size, target, pad_id)["clean_acc"] if n else 0.0
    lo, hi = wilson_interval(round(acc * n), n)
    return {"static_acc": acc, "static_acc_lo": lo, "static_acc_hi": hi, "static_n": float(n)}
