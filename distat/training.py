"""The training loop of one trial, free of Ray and MLflow.

``run_trial(cfg, output_dir)`` trains for ``cfg.train.epochs`` epochs with AdamW and a linear
warm-up/decay schedule, evaluates clean accuracy on the dev split after each epoch, writes a checkpoint
after each epoch and calls ``on_epoch_end(metrics, checkpoint_dir)`` (the search layer reports to Tune
from there). A run resumed from a checkpoint continues bit for bit like an uninterrupted one: the
checkpoint holds the weights (safetensors), optimiser, scheduler, method state (adaptive weights, TA-VAT's
table), every RNG state and the epoch, and each epoch's data order is a pure function of (seed, epoch).

A non-finite loss or gradient norm stops the trial: the result is marked ``diverged`` and carries the
last good epoch's metrics; the caller is never crashed by it.

Under ``torch.distributed`` (Ray Train sets it up) the model is wrapped in DDP, each rank takes a strided
shard of the epoch's order, and rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from distat import data as data_mod
from distat import methods
from distat.atomic import atomic_dir
from distat.config import TrialConfig, load_data, resolve_data
from distat.errors import ModelError, format_validation_error
from distat.methods.base import StepContext
from distat.models import autocast_factory, load_classifier, load_tokenizer, pick_device, resolve_backbone
from distat.scores import score_predictions

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "epoch_"
_STATE_FILE = "train_state.pt"
_WEIGHTS_FILE = "model.safetensors"
_EXTRA_ROWS_FILE = "extra_rows.jsonl"
_META_FILE = "distat_meta.json"

EpochCallback = Callable[[dict[str, float], Path | None], bool | None]


@dataclass
class TrialResult:
    metrics: dict[str, float]  # the last good epoch's metrics (plus ``diverged``)
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    checkpoint: Path | None = None  # the newest checkpoint written
    stopped_early: bool = False
    model: nn.Module | None = field(default=None, repr=False)  # the trained bare model (for evaluation)
    tokenizer: Any = field(default=None, repr=False)
    method: methods.ATMethod | None = field(default=None, repr=False)  # its state: adaptive w, TA-VAT's table...


# --------------------------------------------------------------------------------------------------
# setup


@dataclass
class _Parts:
    model: nn.Module  # possibly DDP-wrapped
    module: nn.Module
    tokenizer: Any
    train: data_mod.EncodedSplit
    dev: data_mod.EncodedSplit
    device: torch.device
    method: methods.ATMethod
    train_rows: data_mod.Split | None = None  # the raw rows behind ``train`` (without iterative additions)
    max_length: int = 128
    extra: data_mod.Split | None = None  # rows added between epochs (iterative ADA), checkpointed

    def add_rows(self, rows: data_mod.Split) -> None:
        """Append ``rows`` to the training set from the next epoch on."""
        if not len(rows) or self.train_rows is None:
            return
        self.extra = rows if self.extra is None else self.extra.extend(rows)
        self.train = data_mod.encode(self.train_rows.extend(self.extra), self.tokenizer, self.max_length)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_splits(cfg: TrialConfig) -> tuple[data_mod.Dataset, data_mod.Split, data_mod.Split]:
    """The dataset and the trial's train and dev rows: seeded samples of at most ``max_*_examples``; the
    train rows exclude ``data.augment_file``'s extra rows (see :func:`build_parts`)."""
    dcfg = resolve_data(cfg.data)  # the split names as the data has them (a dev split may be carved from train)
    ds = load_data(dcfg, ("train", "dev"))
    train_split = ds.split(dcfg.train_split).sample(dcfg.max_train_examples, seed=cfg.seed)
    dev_split = ds.split(dcfg.dev_split).sample(dcfg.max_dev_examples, seed=cfg.seed)
    return ds, train_split, dev_split


def build_parts(cfg: TrialConfig, device: torch.device | None = None) -> _Parts:
    dcfg = cfg.data
    ds, train_split, dev_split = load_splits(cfg)
    if dcfg.augment_file:
        train_split = train_split.extend(data_mod.read_rows(dcfg.augment_file, dcfg.train_split, ds.num_labels))
    path = resolve_backbone(cfg.model.backbone)
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    max_length = min(dcfg.max_length, tokenizer.model_max_length)
    seed_everything(cfg.seed)  # the classifier head's init is part of the trial's reproducibility
    module = load_classifier(path, ds.num_labels, cfg.model.trust_remote_code)
    device = device or pick_device(cfg.model.device)
    module.to(device)
    model: nn.Module = module
    rank, world = _world()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    method = methods.build(cfg.method)
    method.setup(module)
    return _Parts(
        model=model, module=module, tokenizer=tokenizer, device=device, method=method,
        train=data_mod.encode(train_split, tokenizer, max_length),
        dev=data_mod.encode(dev_split, tokenizer, max_length),
        train_rows=train_split, max_length=max_length,
    )


def make_optimizer(module: nn.Module, cfg: TrialConfig, extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters and ``extra`` (a method's own, see
    :meth:`distat.methods.ATMethod.parameters`): weight decay on matrices, none on biases and LayerNorm."""
    decay, no_decay = [], []
    named = [*module.named_parameters(), *((f"method.{i}", p) for i, p in enumerate(extra or []))]
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


def make_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0 at ``total_steps``.

    Not ``transformers.get_linear_schedule_with_warmup``: its warm-up starts at ``step / warmup``, so the
    first step runs at learning rate 0, where this one starts at ``1 / (warmup + 1)``; switching would change
    every trial's learning rates and what old checkpoints resume to. This schedule is the library's with
    ``warmup + 1`` and ``total_steps + 1`` steps, one step ahead (tests/test_training.py checks that).
    """
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of an epoch: a pure function of (seed, epoch), so resuming needs no sampler state."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


GROUP_WINDOW = 50  # batches per length-sorted window (transformers' group_by_length uses 50 too)


def grouped_order(order: list[int], lengths: list[int], unit: int, seed: int, epoch: int) -> list[int]:
    """``order`` regrouped so that each run of ``unit`` consecutive examples has similar lengths.

    ``order`` (a seeded shuffle) is cut into windows of ``GROUP_WINDOW`` units, each window is sorted by length
    (longest first; ties keep the shuffle's order) and cut into units, and the full units are shuffled with a
    generator of (seed, epoch); a short last unit stays last. A pure function of its arguments, like
    :func:`epoch_order`, so a resumed epoch sees the same batches. ``unit`` is the batch size times the world
    size: the ranks' strided shards of a unit are batches of similar lengths too.
    """
    if unit < 1:
        raise ValueError(f"unit must be positive, got {unit}")
    window = unit * GROUP_WINDOW
    units: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        units.extend(chunk[k : k + unit] for k in range(0, len(chunk), unit))
    tail = units.pop() if units and len(units[-1]) < unit else []
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    shuffled = [units[i] for i in torch.randperm(len(units), generator=g).tolist()]
    return [i for u in shuffled for i in u] + tail


def _batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    return math.ceil((n // world) / batch_size)


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(module: nn.Module, encoded: data_mod.EncodedSplit, batch_size: int, device: torch.device,
             pad_token_id: int, autocast=None) -> dict[str, float]:
    """Clean scores and loss of ``module`` on a split (eval mode, no dropout), and the split's size.

    Keys: ``clean_acc``, ``dev_loss``, ``dev_n`` and, for imbalanced data, ``macro_f1``, ``balanced_acc``,
    ``majority_rate`` (the gold labels' largest class share: what always answering that class scores) and
    ``precision.<c>`` / ``recall.<c>`` for every label ``c`` (the logits' width), as :mod:`distat.scores`
    defines them."""
    was_training = module.training
    module.eval()
    autocast = autocast or autocast_factory(device)
    loss_sum = 0.0
    num_labels = 0
    golds: list[torch.Tensor] = []
    preds: list[torch.Tensor] = []
    for batch in data_mod.iter_batches(encoded, batch_size, pad_token_id=pad_token_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with autocast():
            logits = module(**batch).logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        num_labels = int(logits.shape[-1])
        # a few ints per example, kept on the CPU: the per-class scores are computed once at the end
        golds.append(labels.cpu())
        preds.append(logits.argmax(-1).cpu())
    module.train(was_training)
    gold = torch.cat(golds).numpy() if golds else np.zeros(0, dtype=np.int64)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    total = int(gold.size)
    # an empty split has no logits to size the classes by; one class keeps score_predictions' contract
    scores = score_predictions(gold, pred, max(num_labels, 1))
    out = {"clean_acc": scores.acc, "dev_loss": loss_sum / max(total, 1),
           # dev_n: the count behind clean_acc, for its confidence interval on the Pareto front
           "dev_n": float(total),
           "macro_f1": scores.macro_f1, "balanced_acc": scores.balanced_acc, "majority_rate": scores.majority_rate}
    for c in range(num_labels):
        out[f"precision.{c}"] = scores.precision[c]
        out[f"recall.{c}"] = scores.recall[c]
    return out


# --------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(obj: Any) -> Any:
    """random.getstate() nests tuples; torch.load(weights_only=True) wants plain containers back."""
    if isinstance(obj, list):
        return tuple(_python_state(x) for x in obj)
    return obj


def save_checkpoint(directory: Path, parts: _Parts, opt, sched, epoch: int, cfg: TrialConfig,
                    history: list[dict[str, float]]) -> Path:
    """Write ``directory/epoch_NNN`` atomically (a temp folder renamed into place) and return it."""
    final = directory / f"{CHECKPOINT_PREFIX}{epoch:03d}"
    with atomic_dir(final) as tmp:
        module = parts.module
        module.config.save_pretrained(tmp)
        parts.tokenizer.save_pretrained(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(_dedupe_shared(state), tmp / _WEIGHTS_FILE, metadata={"format": "pt"})
        torch.save({
            "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "method": parts.method.state_dict(), "rng": _rng_state(), "history": history,
        }, tmp / _STATE_FILE)
        meta = {"epoch": epoch, "backbone": cfg.model.backbone, "num_labels": module.config.num_labels,
                "method": cfg.method.label, "config": cfg.model_dump(mode="json")}
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2))
        if parts.extra is not None:
            data_mod.write_rows(parts.extra, tmp / _EXTRA_ROWS_FILE)
    return final


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): keep one name per storage."""
    seen: dict[tuple[int, int], str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen[key] = name
        out[name] = t
    return out


def prune_checkpoints(directory: Path, keep: int) -> None:
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / _STATE_FILE).is_file() and (p / _WEIGHTS_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``distat_meta.json`` (epoch, backbone, num_labels, method and the full trial config);
    empty for a checkpoint written without one."""
    meta_path = Path(path) / _META_FILE
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"checkpoint {path}: unreadable {_META_FILE} ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"checkpoint {path}: {_META_FILE} is not a JSON object")
    return meta


def checkpoint_config(path: Path) -> TrialConfig:
    """The trial config a checkpoint was trained with (from its ``distat_meta.json``).

    distat before per-method settings saved every method's knobs in ``method`` (the unused ones at their
    defaults, which that version ignored); such a config is read with the knobs its method does not have left
    out, which is exactly what that version trained with."""
    saved = checkpoint_meta(path).get("config")
    if not isinstance(saved, dict):
        raise ModelError(f"checkpoint {path}: no trial config in its {_META_FILE}")
    candidates = [saved]
    method = saved.get("method")
    label = methods.label_of(method) if isinstance(method, dict) else None
    known = methods.settings_class(label) if label else None
    if known is not None:
        candidates.append({**saved, "method": {k: v for k, v in method.items() if k in known.model_fields}})
    for candidate in candidates:
        try:
            return TrialConfig.model_validate(candidate)
        except ValidationError as e:
            error = e
    raise ModelError(format_validation_error(error, f"checkpoint {path}: {_META_FILE}", root=TrialConfig))


def check_resumable(path: Path, cfg: TrialConfig) -> None:
    """Refuse to resume ``cfg`` from a checkpoint written for another backbone or method, judged from the
    config saved in its ``distat_meta.json`` before any weights are read."""
    meta = checkpoint_meta(path)
    if not meta:
        return
    saved = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    backbone = (saved.get("model") or {}).get("backbone", meta.get("backbone"))
    if backbone is not None and backbone != cfg.model.backbone:
        raise ModelError(f"checkpoint {path} was trained from backbone {backbone!r}, this config has "
                         f"{cfg.model.backbone!r}: resume with the same backbone, or pass --overwrite to start over")
    method = meta.get("method")
    if method is not None and method != cfg.method.label:
        raise ModelError(f"checkpoint {path} was trained with method {method!r}, this config has "
                         f"{cfg.method.label!r}: resume with the same method, or pass --overwrite to start over")


def load_checkpoint(path: Path, parts: _Parts, opt, sched) -> tuple[int, list[dict[str, float]]]:
    """Restore everything ``save_checkpoint`` wrote; returns (epoch, history). The caller has checked the
    checkpoint with :func:`check_resumable` (backbone and method) before building the model."""
    meta = checkpoint_meta(path)
    if meta and meta.get("num_labels") != parts.module.config.num_labels:
        raise ModelError(f"checkpoint {path} was trained with {meta.get('num_labels')} labels; this data has "
                         f"{parts.module.config.num_labels}")
    try:
        weights = load_file(path / _WEIGHTS_FILE, device=str(parts.device))
        missing, unexpected = parts.module.load_state_dict(weights, strict=False)
        state = torch.load(path / _STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"checkpoint {path}: cannot read it: {type(e).__name__}: {e}") from None
    tied = {k for k in missing if _is_tied(parts.module, k)}
    if unexpected or set(missing) - tied:
        raise ModelError(f"checkpoint {path} does not match the backbone "
                         f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    parts.method.load_state_dict(state["method"])
    if (path / _EXTRA_ROWS_FILE).is_file():
        split_name = parts.train_rows.name if parts.train_rows is not None else "train"
        parts.add_rows(data_mod.read_rows(path / _EXTRA_ROWS_FILE, split_name, parts.module.config.num_labels))
    rng = state["rng"]
    rng["python"] = _python_state(rng["python"])
    _set_rng_state(rng)
    return int(state["epoch"]), list(state.get("history", []))


def _is_tied(module: nn.Module, name: str) -> bool:
    keys = getattr(module, "_tied_weights_keys", None) or []
    return any(name.endswith(k) or k in name for k in keys)


# --------------------------------------------------------------------------------------------------
# the loop


def _average_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of parameters DDP does not manage across the ranks (a missing one counts as 0,
    so every rank takes part in the same collectives)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def run_trial(
    cfg: TrialConfig,
    output_dir: str | Path | None = None,
    *,
    resume_from: str | Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | None = None,
    augment_fn: Callable[[int, nn.Module, Any], data_mod.Split | None] | None = None,
    augment_rows_per_epoch: int = 0,
) -> TrialResult:
    """Train one trial. ``resume_from`` is a checkpoint folder (see :func:`latest_checkpoint`).

    ``on_epoch_end(metrics, checkpoint_dir)`` may return True to stop after that epoch; ``on_start(info)``
    is called once data and model are loaded (sizes, device, steps per epoch). ``augment_fn(epoch, module,
    tokenizer)``, after every epoch but the last, returns rows to add to the training set from the next
    epoch on (iterative ADA: adversarial examples of the current model); the rows are checkpointed. The
    learning-rate schedule is sized for at most ``augment_rows_per_epoch`` rows added per epoch.
    """
    # the effective split names (a carved dev split included) go into every checkpoint's config
    cfg = cfg.model_copy(update={"data": resolve_data(cfg.data)})
    out = Path(output_dir or cfg.output_dir)
    ckpt_root = out / "checkpoints"
    rank, world = _world()
    if resume_from is not None:
        check_resumable(Path(resume_from), cfg)  # before any data or weights are loaded
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device)
    module, device = parts.module, parts.device
    pad_id = parts.tokenizer.pad_token_id or 0
    tcfg = cfg.train
    steps_per_epoch = _batches_per_epoch(len(parts.train), tcfg.batch_size, world)
    total_steps = sum(_batches_per_epoch(len(parts.train) + augment_rows_per_epoch * e, tcfg.batch_size, world)
                      for e in range(tcfg.epochs)) if augment_fn is not None else steps_per_epoch * tcfg.epochs
    method_params = parts.method.parameters()
    trained = [*module.parameters(), *method_params]
    opt = make_optimizer(module, cfg, method_params)
    sched = make_scheduler(opt, total_steps, tcfg.warmup_ratio)
    autocast = autocast_factory(device, cfg.model.bf16)

    start_epoch, history = 0, []
    if resume_from is not None:
        start_epoch, history = load_checkpoint(Path(resume_from), parts, opt, sched)
        log.info("resumed from %s (epoch %d)", resume_from, start_epoch)
    else:
        seed_everything(cfg.seed + 1)  # the step RNG stream: the same whether or not setup consumed RNG
    if on_start is not None:  # after everything that can fail on bad input (a bad checkpoint included)
        on_start({"train_examples": len(parts.train), "dev_examples": len(parts.dev), "device": str(device),
                  "num_labels": module.config.num_labels, "steps_per_epoch": steps_per_epoch, "world_size": world,
                  "model": parts.model})

    def backward(loss: torch.Tensor, sync: bool = True) -> None:
        if sync or world == 1:
            loss.backward()
        else:
            with parts.model.no_sync():  # type: ignore[operator]
                loss.backward()

    ctx = StepContext(model=parts.model, module=module, backward=backward, autocast=autocast,
                      step=sched.last_epoch, total_steps=total_steps)
    result = TrialResult(metrics=history[-1] if history else {}, history=history, model=module,
                         tokenizer=parts.tokenizer, method=parts.method)
    if history:
        result.checkpoint = Path(resume_from) if resume_from else None

    for epoch in range(start_epoch + 1, tcfg.epochs + 1):
        module.train()
        order = epoch_order(len(parts.train), cfg.seed, epoch)
        if tcfg.group_by_length:
            lengths = [len(ids) for ids in parts.train.input_ids]
            order = grouped_order(order, lengths, tcfg.batch_size * world, cfg.seed, epoch)
        order = order[: len(order) // world * world][rank::world]
        loss_sum, steps, t0 = 0.0, 0, time.perf_counter()
        log_sums: dict[str, float] = {}
        log_counts: dict[str, int] = {}
        bad: str | None = None
        for batch in data_mod.iter_batches(parts.train, tcfg.batch_size, order=order, pad_token_id=pad_id):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            ctx.step = sched.last_epoch
            out_step = parts.method.train_step(ctx, batch)
            if world > 1 and method_params:
                _average_grads(method_params, world)  # DDP averages the model's; the method's are ours
            loss_value = float(out_step.loss)
            if not math.isfinite(loss_value):
                bad = f"loss {loss_value} at epoch {epoch} step {steps + 1}"
                break
            if tcfg.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(trained, tcfg.max_grad_norm)
                if not torch.isfinite(gnorm):
                    bad = f"gradient norm {float(gnorm)} at epoch {epoch} step {steps + 1}"
                    break
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss_value
            steps += 1
            for key, value in out_step.logs.items():  # averaged over the steps that logged the key
                log_sums[key] = log_sums.get(key, 0.0) + value
                log_counts[key] = log_counts.get(key, 0) + 1
            if on_step is not None:
                on_step(steps, loss_value)
        if bad is not None:
            opt.zero_grad(set_to_none=True)
            log.warning("trial diverged: %s", bad)
            result.diverged = True
            result.metrics = {**(history[-1] if history else {}), "diverged": 1.0}
            return result

        metrics = {"epoch": float(epoch), "train_loss": loss_sum / max(steps, 1),
                   "epoch_time_s": time.perf_counter() - t0, "diverged": 0.0}
        metrics.update({key: total / log_counts[key] for key, total in log_sums.items()})
        metrics.update(evaluate(module, parts.dev, tcfg.eval_batch_size, device, pad_id, autocast))
        metrics.update(parts.method.epoch_logs())
        if augment_fn is not None and epoch < tcfg.epochs:
            rows = augment_fn(epoch, module, parts.tokenizer)
            module.train()
            if rows is not None:
                parts.add_rows(rows)
            metrics["iterative_examples"] = float(len(parts.extra) if parts.extra is not None else 0)
        history.append(metrics)
        ckpt: Path | None = None
        if rank == 0:
            ckpt = save_checkpoint(ckpt_root, parts, opt, sched, epoch, cfg, history)
            prune_checkpoints(ckpt_root, tcfg.keep_checkpoints)
        result.metrics, result.checkpoint = metrics, ckpt
        if on_epoch_end is not None and on_epoch_end(metrics, ckpt):
            result.stopped_early = epoch < tcfg.epochs
            break
    return result
