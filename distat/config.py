"""Validated configuration: YAML in, pydantic objects out, one-line errors.

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo is an error that names
the key rather than a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distat.errors import ConfigError

ADAPTIVE_BASES = ("pgd", "freelb", "tavat")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
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


class ModelConfig(_Strict):
    """The backbone: ``default`` is the packaged all-MiniLM-L6-v2 BERT; otherwise a local folder."""

    backbone: str = "default"
    trust_remote_code: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # bf16 autocast; only ever used on CUDA


class MethodConfig(_Strict):
    """The AT method and its knobs (the ones TextDefender exposes, plus adaptive AT's).

    ``name`` is a registry key (``standard``, ``fgm``, ``pgd``, ``freelb``, ``tavat``, ``trades``,
    ``adaptive``, ``mixup``); ``adaptive_pgd`` / ``adaptive_freelb`` / ``adaptive_tavat`` are shorthands for
    ``name: adaptive`` with ``base`` set.
    """

    name: str = "standard"
    base: Literal["pgd", "freelb", "tavat"] | None = None
    adv_steps: int = Field(default=3, ge=1, le=100)  # k
    adv_lr: float = Field(default=0.03, gt=0)  # α: step size of each ascent step
    init_mag: float = Field(default=0.05, ge=0)  # radius of the random initial perturbation
    max_norm: float = Field(default=0.0, ge=0)  # radius of the norm ball; 0 = unbounded
    norm_type: Literal["l2", "linf"] = "l2"
    trades_beta: float = Field(default=6.0, ge=0)  # TRADES: weight of the KL term
    # adaptive AT
    beta: float | None = Field(default=None, gt=0)  # None = auto: k for PGD/TA-VAT, (k+1)/2 for FreeLB
    w_lr: float = Field(default=1.0, ge=0)  # learning rate of the gradient ascent on w; 0 freezes w
    w_init: Literal["uniform", "linear"] = "uniform"  # linear: w_i ∝ k-i+1 (FreeLB's implicit weights)
    # hidden-state mixup (AMDA's mixup half)
    mix_type: Literal["tmix", "smix"] = "tmix"  # tmix: every token's hidden state; smix: position 0 only
    # λ ~ Beta(α, α). The AMDA authors' scripts (MixADA) run TMix with α = 2.0 (a few runs use 0.4); 2.0
    # puts λ mostly near 0.5 (E|λ − ½| ≈ 0.19), i.e. real mixing rather than near-copies of one example.
    mix_alpha: float = Field(default=2.0, gt=0)
    # encoder layers (1-based: L = mix the output of layer L) to draw from; None = the paper's {7, 9, 12}
    # of 12 scaled to the backbone's depth (distat.augment.mixup.default_layers); checked against the depth
    # when the model is built
    mix_layers: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] | None = None
    mix_weight: float = Field(default=1.0, ge=0)  # weight of KL(mixed targets ‖ mixed prediction)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"].startswith("adaptive_"):
            base = data["name"].removeprefix("adaptive_")
            if data.get("base") not in (None, base):
                raise ValueError(f"name {data['name']!r} contradicts base {data['base']!r}")
            data = {**data, "name": "adaptive", "base": base}
        return data

    @field_validator("mix_layers", mode="before")
    @classmethod
    def _layer_string(cls, v: Any) -> Any:
        # "4,5,6" (how a search space's categorical choice names a layer set) → (4, 5, 6)
        if isinstance(v, str):
            try:
                return tuple(int(part) for part in v.replace(" ", "").split(",") if part)
            except ValueError:
                raise ValueError(f"{v!r}: expected layer numbers separated by commas, e.g. '4,5,6'") from None
        return v

    @field_validator("mix_layers")
    @classmethod
    def _sorted_layers(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if v is None else tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        from distat.methods import available  # late: methods import this module

        if self.name not in available():
            raise ValueError(f"unknown method {self.name!r} (choose from {', '.join(available())})")
        if self.name == "adaptive" and self.base is None:
            raise ValueError("method 'adaptive' needs base: one of " + ", ".join(ADAPTIVE_BASES))
        if self.name != "adaptive" and self.base is not None:
            raise ValueError(f"base is only for method 'adaptive', not {self.name!r}")
        return self

    @property
    def label(self) -> str:
        """A human name: ``pgd``, ``adaptive_freelb``..."""
        return f"adaptive_{self.base}" if self.name == "adaptive" else self.name


class TrainConfig(_Strict):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 = no clipping
    keep_checkpoints: int = Field(default=2, ge=1)


class VictimConfig(_Strict):
    """The model ADA attacks: a given checkpoint, or a standard fine-tune of the trial's backbone and data."""

    checkpoint: str | None = None
    epochs: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None = the trial's train.lr


class AugmentConfig(_Strict):
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


class TrialConfig(_Strict):
    """Everything one training run needs; a trial is reproducible from it."""

    seed: int = 13
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
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


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first problem of a pydantic error as one line: ``file: key.path: message``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<top level>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


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
        raise ConfigError(format_validation_error(e, source)) from None


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
