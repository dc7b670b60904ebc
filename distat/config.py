"""Validated configuration: YAML in, pydantic objects out, one-line errors.

Defaults live here and beside each AT method: a method's knobs are its settings class in its own module
(:class:`distat.methods.pgd.PGDSettings`...), and the ``method`` section is their union
(:data:`distat.methods.MethodSettings`, chosen by ``name``). Every model forbids unknown keys, so a typo, or
a knob the named method does not have, is an error that names the key rather than a silently ignored
setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from distat.errors import ConfigError, format_validation_error
from distat.methods import MethodSettings, StandardSettings
from distat.settings import Strict


class DataConfig(Strict):
    """Where the labelled splits come from and how they are tokenised."""

    path: str = "builtin:rotten_tomatoes"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str | None = None
    text_fields: tuple[str, ...] | None = None
    max_train_examples: int | None = Field(default=None, gt=0)
    max_dev_examples: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=128, ge=8, le=4096)
    # extra training rows appended after sampling (JSONL: text_a, text_b, label), e.g. the adversarial
    # examples ADA picked for this trial; they are not counted by max_train_examples
    augment_file: str | None = None


class ModelConfig(Strict):
    """The backbone: ``default`` is the packaged all-MiniLM-L6-v2 BERT; otherwise a local folder."""

    backbone: str = "default"
    trust_remote_code: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # bf16 autocast; only ever used on CUDA


class TrainConfig(Strict):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 = no clipping
    keep_checkpoints: int = Field(default=2, ge=1)


class VictimConfig(Strict):
    """The model ADA attacks: a given checkpoint, or a standard fine-tune of the trial's backbone and data."""

    checkpoint: str | None = None
    epochs: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None = the trial's train.lr


class AugmentConfig(Strict):
    """ADA: adversarial examples of the training set (Si et al., AMDA), generated once per pool.

    A pool attacks the first ⌈pool_ratio·N⌉ examples of a seeded permutation of the N training rows; a trial
    with ``ratio`` r trains on the original rows plus the successful adversarial examples among the first
    ⌈r·N⌉, so pools of every ratio are nested and one pool serves all trials of a search.
    """

    ratio: float = Field(default=0.5, ge=0, le=1)  # fraction of the training set attacked for this trial
    pool_ratio: float | None = Field(default=None, gt=0, le=1)  # None = ratio; a search sets its largest
    recipe: Literal["pwws", "textfooler"] = "pwws"
    victim: VictimConfig = VictimConfig()
    max_modify_rate: float | None = Field(default=0.3, gt=0, le=1)
    query_budget: int | None = Field(default=None, ge=1)
    max_candidates: int | None = Field(default=None, ge=1)
    actors: int = Field(default=1, ge=0)  # attack actors when generating (0 = in the generating process)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    cache: bool = True  # False: generate into the trial's own folder (the benchmark's "fresh" baseline)
    # iterative ADA: after each epoch but the last, attack this many training rows (a new seeded draw each
    # epoch) against the model being trained and add the successful examples; 0 = one-shot ADA only
    iterative_n: int = Field(default=0, ge=0)

    @property
    def effective_pool_ratio(self) -> float:
        return max(self.pool_ratio or 0.0, self.ratio)


class TrialConfig(Strict):
    """Everything one training run needs; a trial is reproducible from it."""

    seed: int = 13
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodSettings = StandardSettings()  # one AT method's settings, chosen by its ``name``
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig | None = None  # ADA (adversarial data augmentation); None = off
    output_dir: str = "runs/train"

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if "://" in v:
            raise ValueError(f"{v!r} is a URI: checkpoints go to a filesystem path (a shared mount on a cluster)")
        return v


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML mapping safely; any problem is a ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def load_trial_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrialConfig:
    """Load and validate a trial YAML (``distat train``); ``overrides`` are dotted keys → values."""
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_trial_config(data, str(path))


def parse_trial_config(data: dict[str, Any], source: str = "<config>") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, TrialConfig)) from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "method.adv_lr", 0.1)`` sets ``d["method"]["adv_lr"]``, creating mappings."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value
